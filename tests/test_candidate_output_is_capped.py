"""TRAIN's only writable channel is capped by the kernel, in bytes and in files: `output_limit`.

Property: writes to /out fail with ENOSPC at `output_limit_mb` (a tmpfs `size=`), creating files fails
at the inode cap, the verdict is `output_limit` whether the candidate dies of the error or swallows it,
and nothing of the flood lands on the host's disk.
Attack defeated: filling the host's disk (or memory) through the output channel to break the
controller, the other workers or the ledger.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.constants import Status
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def _size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_writing_past_the_cap_is_output_limit(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    spec = make_spec("output_flood", output_limit_mb=16, time_budget_s=20)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.OUTPUT_LIMIT
    assert verdict.timings["train_wall_s"] < 20  # stopped by the full channel, not by the clock
    assert "No space left on device" in Path(verdict.logs["train"]).read_text()
    assert _size_of(spec.trial_dir) < 4 * 1024 * 1024  # logs and records only: the flood stayed in tmpfs


def test_swallowing_enospc_is_still_output_limit(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec], tmp_path: Path
) -> None:
    candidate = tmp_path / "many_files.py"
    candidate.write_text(
        textwrap.dedent(
            """
            import os
            out = os.environ["AUTORESEARCH_OUT"]
            made = 0
            try:
                for i in range(1_000_000):
                    open(os.path.join(out, f"f{i}"), "wb").close()
                    made += 1
            except OSError as exc:
                print(f"stopped after {made} files: {exc}")
            """
        )
    )
    verdict = docker_sandbox.run_trial(make_spec(candidate, time_budget_s=20))
    assert verdict.status is Status.OUTPUT_LIMIT
    assert "stopped after" in Path(verdict.logs["train"]).read_text()
