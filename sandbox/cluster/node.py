"""What runs on a cluster node: its setup check, and one trial through the node's own sandbox.

Both functions are plain module-level functions that Ray ships by reference and runs in a Ray worker
process on the node (sandbox/cluster/verify.py and dispatch.py wrap them in `ray.remote`). They
return only plain data (wire.py), so the controller never unpickles anything the trial could have
shaped.

- `setup_node(runner, ...)`: the node's facts (`NodeFacts`): the trainer image's id, the data's
  manifest hash (every file checked against the manifest), its hardware class, and the result of
  reaping the sandbox containers a dead owner left on this node (a Ray worker killed with its node,
  or a controller's cancel). The `DockerNodeRunner` also runs the isolation preflight there: a node
  whose engine lets a probe out is refused like one with another image.
- `reap_node(runner)`: reaps what dead owners left on this node; the controller runs it after a
  cancel killed a trial's Ray worker (`ray.cancel(force=True)`: no `finally` ran there, so its
  containers are still up; the dead worker's pid is their owner label).
- `run_on_node(runner, payload_json)`: writes the candidate source into a node-local temp folder,
  runs the trial there with the node's sandbox, and returns the verdict JSON and the folder as a
  capped tar (or the sandbox's error as a type name and message). The temp folder is removed after.

`NodeRunner` is the seam for tests: the real one drives `DockerSandbox` on the node's engine;
tests substitute a fake that writes a trial folder without an engine. The Ray worker holds the
node's engine socket exactly as the controller does on one host: untrusted code runs only inside
the hardened containers the sandbox starts.

Per-node settings come from the environment the node's `ray start` was given:
`AUTORESEARCH_NODE_CPUSET` (the CPUs this node's trials are pinned to; replaces the controller's
cpuset) and `AUTORESEARCH_DATA` (the node's data folder, as for prepare.py).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from functools import cache
from pathlib import Path
from typing import Protocol

from sandbox import constants as C
from sandbox.cluster.wire import NodeFacts, NodeReturn, TrialPayload, pack_trial_dir
from sandbox.engine.limits import Limits
from sandbox.verdict import SandboxError, TrialSpec, Verdict

logger = logging.getLogger(__name__)

ENV_NODE_CPUSET = "AUTORESEARCH_NODE_CPUSET"


class NodeRunner(Protocol):
    """What a node needs to check itself and run one trial (picklable: Ray ships it to the node)."""

    name: str

    def image_id(self) -> str | None: ...

    def data_sha256(self, profile: str, data_dir: str | None) -> str | None: ...

    def hardware_class(self, profile: str) -> str: ...

    def reap(self) -> tuple[int, int]: ...

    def preflight(self, profile: str, limits: Limits, data_dir: str | None) -> list[str]: ...

    def run(self, spec: TrialSpec, data_dir: str | None, image_id: str) -> Verdict: ...


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" when it says none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return " ".join(value.split())
    return "unknown"


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _node_name(node_id: str) -> str:
    import ray

    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return str(node.get("NodeName") or socket.gethostname())
    return socket.gethostname()


def setup_node(
    runner: NodeRunner, profile: str, limits_json: str, data_dir: str | None, preflight: bool
) -> dict[str, object]:
    """The node's facts, as a dict of plain data (`NodeFacts`)."""
    node_id = _node_id()
    problems: list[str] = []
    containers = volumes = 0
    try:
        containers, volumes = runner.reap()
    except SandboxError as exc:
        problems.append(f"reaping orphans failed: {exc}")
    image: str | None = None
    data: str | None = None
    try:
        image = runner.image_id()
    except SandboxError as exc:
        problems.append(f"trainer image: {exc}")
    try:
        data = runner.data_sha256(profile, data_dir)
    except (OSError, SandboxError) as exc:  # prepare's DataIntegrityError is an OSError
        problems.append(f"data: {exc}")
    if preflight and not problems:
        try:
            problems += runner.preflight(profile, Limits.model_validate_json(limits_json), data_dir)
        except SandboxError as exc:
            problems.append(f"preflight could not run: {exc}")
    facts = NodeFacts(
        node_id=node_id,
        node_name=_node_name(node_id),
        hostname=socket.gethostname(),
        hardware_class=runner.hardware_class(profile),
        image_id=image,
        data_sha256=data,
        reaped_containers=containers,
        reaped_volumes=volumes,
        problems=problems,
    )
    return facts.model_dump(mode="json")


def reap_node(runner: NodeRunner) -> dict[str, object]:
    """Remove the sandbox containers and volumes whose owner died on this node; what was removed."""
    containers, volumes = runner.reap()
    return {"node_id": _node_id(), "containers": containers, "volumes": volumes}


def node_limits(limits: Limits) -> Limits:
    """The limits a trial runs with on this node: the node's own cpuset when it was given one."""
    cpuset = os.environ.get(ENV_NODE_CPUSET)
    if not cpuset:
        return limits
    return Limits.model_validate(limits.model_dump() | {"cpuset_cpus": cpuset})


def _gpu_ids(profile: str) -> tuple[str, ...]:
    """The GPUs Ray assigned this task (its lease on the node); none on the tiny profile."""
    if profile != "gpu":
        return ()
    import ray

    return tuple(str(i) for i in ray.get_gpu_ids())


def run_on_node(runner: NodeRunner, payload_json: str) -> dict[str, object]:
    """Run one dispatched trial on this node; a `NodeReturn` as plain data."""
    payload = TrialPayload.model_validate_json(payload_json)
    node_id = _node_id()
    with tempfile.TemporaryDirectory(prefix=f"autoresearch-{payload.trial_id}-") as tmp:
        trial_dir = Path(tmp) / "trial"
        trial_dir.mkdir()
        candidate = trial_dir / C.CANDIDATE_FILE
        candidate.write_text(payload.candidate_source, encoding="utf-8")
        spec = TrialSpec(
            trial_id=payload.trial_id,
            candidate=candidate,
            trial_dir=trial_dir,
            profile=payload.profile,
            limits=node_limits(payload.limits),
            seed=payload.seed,
            gpu_ids=_gpu_ids(payload.profile),
            min_compute_share=payload.min_compute_share,
        )
        try:
            image = runner.image_id()
            if image != payload.image_id:
                raise SandboxError(f"this node's trainer image is {image}, the run pinned {payload.image_id}")
            verdict = runner.run(spec, payload.data_dir, payload.image_id)
        except SandboxError as exc:
            logger.error("trial %s on node %s: %s", payload.trial_id, node_id, exc)
            ret = NodeReturn(
                dispatch_id=payload.dispatch_id,
                node_id=node_id,
                error_type=type(exc).__name__,
                error=str(exc),
            )
            return ret.model_dump()
        ret = NodeReturn(
            dispatch_id=payload.dispatch_id,
            node_id=node_id,
            verdict_json=verdict.model_dump_json(),
            archive=pack_trial_dir(trial_dir),
            root=str(trial_dir.resolve()),
        )
        return ret.model_dump()


# --------------------------------------------------------------------------- the real runner


@cache
def _docker_sandbox(image_id: str, data_dir: str | None) -> object:
    """One DockerSandbox per Ray worker process and pinned image, created from the image's id."""
    from sandbox.engine.docker import DockerSandbox

    return DockerSandbox(image=image_id, data_dir=Path(data_dir) if data_dir else None, reap_orphans=False)


class DockerNodeRunner:
    """Runs trials through the node's Docker engine, exactly as `harness run` does on one host."""

    name = "docker"

    def __init__(self, image: str = C.TRAINER_IMAGE) -> None:
        self.image = image

    def image_id(self) -> str | None:
        from sandbox.engine.docker_config import connect, resolve_image

        return resolve_image(connect(), self.image)

    def data_sha256(self, profile: str, data_dir: str | None) -> str | None:
        import prepare

        folder = Path(data_dir) if data_dir else prepare.data_dir(profile)
        return prepare.verify_data(folder)

    def hardware_class(self, profile: str) -> str:
        if profile == "gpu":
            from sandbox.engine.gpu import discover_gpus

            names = sorted({g.name for g in discover_gpus() if g.name})
            return "gpu:" + ("+".join(names) if names else "unknown")
        return "cpu:" + cpu_model()

    def reap(self) -> tuple[int, int]:
        from sandbox.engine import reaper
        from sandbox.engine.docker_config import connect

        report = reaper.reap(connect())
        return len(report.containers), len(report.volumes)

    def preflight(self, profile: str, limits: Limits, data_dir: str | None) -> list[str]:
        from sandbox.engine.docker_config import connect
        from sandbox.preflight.runner import run_preflight

        result = run_preflight(
            connect(), limits, Path(data_dir) if data_dir else None, profile=profile, image=self.image
        )
        return [f"preflight {c.name}: {c.detail}" for c in result.checks if not c.passed]

    def run(self, spec: TrialSpec, data_dir: str | None, image_id: str) -> Verdict:
        sandbox = _docker_sandbox(image_id, data_dir)
        verdict: Verdict = sandbox.run_trial(spec)  # type: ignore[attr-defined]
        return verdict


class LocalNodeRunner:
    """The engine-free `LocalSandbox` on the node. ISOLATES NOTHING: tests and benches only."""

    name = "local"
    IMAGE_ID = "local:no-image"

    def image_id(self) -> str | None:
        return self.IMAGE_ID

    def data_sha256(self, profile: str, data_dir: str | None) -> str | None:
        return DockerNodeRunner().data_sha256(profile, data_dir)

    def hardware_class(self, profile: str) -> str:
        return DockerNodeRunner().hardware_class(profile)

    def reap(self) -> tuple[int, int]:
        return 0, 0

    def preflight(self, profile: str, limits: Limits, data_dir: str | None) -> list[str]:
        return []

    def run(self, spec: TrialSpec, data_dir: str | None, image_id: str) -> Verdict:
        from sandbox.engine.local import LocalSandbox

        return LocalSandbox(data_dir=Path(data_dir) if data_dir else None).run_trial(spec)
