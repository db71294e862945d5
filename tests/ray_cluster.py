"""The cluster tests' side of a real local Ray cluster: `sandbox/cluster/local.py` starts it (the same
launcher `make ray-local` runs); this module adds a fake node runner that writes a trial folder without
an engine, and the temp folders the fixtures put a cluster in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sandbox.cluster.local import LocalCluster, start_cluster, use_token
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialSpec, Verdict
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox

__all__ = [
    "ENV_FAKE_IMAGE",
    "FAKE_IMAGE",
    "FakeNodeRunner",
    "LocalCluster",
    "marks",
    "start_cluster",
    "use_token",
]

ENV_FAKE_IMAGE = "AUTORESEARCH_FAKE_IMAGE"  # the image id a FakeNodeRunner on this node reports
FAKE_IMAGE = "sha256:" + "f" * 64


# --------------------------------------------------------------------------- the fake node runner


class FakeNodeRunner:
    """A node runner without an engine: FakeSandbox writes the trial folder (score from the candidate).

    It reports the image id in its node's AUTORESEARCH_FAKE_IMAGE (a default otherwise), so a node
    started with another value is a node with another trainer image. `delay_s` holds each trial
    that long; `marks` (a folder) gets one file per trial started, naming the node and the Ray
    worker's pid, so a test can tell where a trial runs and whether its process is still alive;
    `reaps` (a folder) gets one file per reaping pass, naming the node.
    """

    name = "fake"

    def __init__(self, *, delay_s: float = 0.0, marks: Path | None = None, reaps: Path | None = None) -> None:
        self.delay_s = delay_s
        self.marks = str(marks) if marks else None
        self.reaps = str(reaps) if reaps else None

    def image_id(self) -> str | None:
        return os.environ.get(ENV_FAKE_IMAGE, FAKE_IMAGE)

    def data_sha256(self, profile: str, data_dir: str | None) -> str | None:
        return "d" * 64

    def hardware_class(self, profile: str) -> str:
        return "cpu:fake"

    def reap(self) -> tuple[int, int]:
        if self.reaps:
            import ray

            node = ray.get_runtime_context().get_node_id()
            (Path(self.reaps) / f"{node}.{time.monotonic_ns()}").write_text(node, encoding="utf-8")
        return 0, 0

    def preflight(self, profile: str, limits: Limits, data_dir: str | None) -> list[str]:
        return []

    def run(self, spec: TrialSpec, data_dir: str | None, image_id: str) -> Verdict:
        import ray

        if self.marks:
            node = ray.get_runtime_context().get_node_id()
            mark = Path(self.marks) / f"{spec.trial_id}.{os.getpid()}"
            mark.write_text(json.dumps({"node_id": node, "pid": os.getpid()}), encoding="utf-8")
        time.sleep(self.delay_s)
        return FakeSandbox().run_trial(spec)


def marks(folder: Path) -> Iterator[dict[str, object]]:
    for path in sorted(folder.iterdir()):
        yield {"trial": path.name.rsplit(".", 1)[0], **json.loads(path.read_text(encoding="utf-8"))}


def fresh_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp"))


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
