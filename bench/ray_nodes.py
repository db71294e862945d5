"""`bench/throughput.py --ray`: the same whole-loop measurement with trials dispatched to 1..N Ray
worker nodes on this host, each node with its own cpuset (`--cpus-per-worker` CPUs), next to the
`--workers` configurations on one host.

A local cluster is started once (sandbox/cluster/local.py, as `make ray-local`: a head with no trial slots, one worker node
per CPU set, token authentication, no dashboard) and stopped, by pid, at the end. The configuration
with k nodes runs k workers and a `RaySandbox` restricted to the first k nodes, so the only
difference from `--workers k` on one host is the dispatch: Ray, the node task, the tar of the trial
folder and the controller's journal. The cpuset check reads each run's container cpuset from the
engine's inspect output and compares it with the cpuset of the node that the ledger row names.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.records.schemas import TrialRecord
from sandbox import constants as C


@contextmanager
def local_cluster(nodes: int, cpus: Sequence[int], cpus_per_node: int) -> Iterator[Any]:
    import shutil

    from sandbox.cluster.local import LocalCluster, start_cluster

    cpusets = [
        ",".join(str(c) for c in cpus[k * cpus_per_node : (k + 1) * cpus_per_node]) for k in range(nodes)
    ]
    root = Path(tempfile.mkdtemp(prefix="ar-ray-bench-", dir="/tmp"))
    cluster: LocalCluster = start_cluster(root, nodes, cpusets=cpusets)
    try:
        yield cluster, dict(zip(cluster.nodes, cpusets, strict=True))
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def ray_sandbox(cluster: Any, k: int, run_dir: Path, limits: Any, data_dir: Path | None) -> Any:
    """A RaySandbox on the first k worker nodes, pinning this host's trainer image and data."""
    import prepare
    from sandbox.cluster.dispatch import RaySandbox
    from sandbox.engine.docker_config import connect, resolve_image

    node_ids = [cluster.nodes[f"node-{i}"] for i in range(k)]
    return RaySandbox(
        cluster.address,
        run_dir,
        profile="tiny",
        limits=limits,
        data_dir=data_dir,
        image_id=resolve_image(connect()),
        data_sha256=prepare.verify_data(data_dir or prepare.data_dir("tiny")),
        only_nodes=node_ids,
    )


def cpusets_ok(run_dir: Path, records: Sequence[TrialRecord], by_node: dict[str, str]) -> bool:
    """TRAIN and EVAL of every run were created with the cpuset of the node its row names."""
    for record in records:
        for run in record.runs:
            if run.node is None:
                return False
            want = by_node.get(run.node.node_name)
            folder = run_dir / "trials" / record.trial_id / run.folder
            for state in (C.TRAIN_STATE_FILE, C.EVAL_STATE_FILE):
                path = folder / state
                if not path.exists():
                    if state == C.EVAL_STATE_FILE and run.status.value != "ok":
                        continue
                    return False
                got = json.loads(path.read_text(encoding="utf-8"))["HostConfig"].get("CpusetCpus")
                if got != want:
                    return False
    return True
