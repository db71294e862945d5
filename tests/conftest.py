"""Shared fixtures.

`tiny_data` prepares the tiny profile once per test session into a temporary folder (about two
seconds), so every test that needs tokenized data shares it instead of rebuilding it. `ray_cluster`
starts a real local Ray cluster (a head and two worker nodes, about 15 s) once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import docker

    from sandbox.cluster.local import LocalCluster
    from sandbox.engine.docker import DockerSandbox
    from sandbox.preflight.facts import PreflightResult
    from sandbox.verdict import TrialSpec


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared tiny-profile data folder (train/, val/, tokenizer/, manifest.json). Treat as read-only."""
    from sandbox.data.build import prepare_data

    return prepare_data("tiny", tmp_path_factory.mktemp("tiny_data"))


# --------------------------------------------------------------------------- sandbox (trial) fixtures

CANDIDATES = Path(__file__).parent / "candidates"


def in_ci() -> bool:
    """True under CI (`CI` set to anything but empty, 0, false or no: CI=true is what .ci/run sets)."""
    import os

    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def engine_unusable(reason: str) -> NoReturn:
    """Skip a docker test locally, but FAIL it in CI: CI starts the engine, registers runsc and builds
    the images, so anything missing there is a broken CI, not a reason to skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI must run the docker tests for real)", pytrace=False)
    pytest.skip(reason)


def require_runsc(client: docker.DockerClient) -> None:
    """Return when gVisor's runsc is registered with the engine; else skip locally, fail in CI."""
    runtimes = client.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        engine_unusable(
            f"runsc (gVisor) is not registered with the engine (runtimes: {sorted(runtimes)}); run `make engine`"
        )


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """A client for a reachable Docker engine (skips locally without one, fails in CI)."""
    from sandbox.engine.docker_config import connect
    from sandbox.verdict import SandboxError

    try:
        return connect()
    except SandboxError as exc:
        engine_unusable(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def runsc_client(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The engine's client, once runsc is known to be registered (skips locally, fails in CI)."""
    require_runsc(docker_client)
    return docker_client


@pytest.fixture(scope="session")
def trainer_image(docker_client: docker.DockerClient) -> str:
    """The trainer image's ID (skips locally when it is not built, fails in CI)."""
    from sandbox.engine.docker_config import resolve_image
    from sandbox.verdict import ImageMissing

    try:
        return resolve_image(docker_client)
    except ImageMissing as exc:
        engine_unusable(str(exc))


@pytest.fixture(scope="session")
def docker_sandbox(docker_client: docker.DockerClient, trainer_image: str, tiny_data: Path) -> DockerSandbox:
    """A DockerSandbox on the tiny test data; reaps orphans once, at creation."""
    from sandbox.engine.docker import DockerSandbox

    return DockerSandbox(client=docker_client, data_dir=tiny_data)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., TrialSpec]:
    """Build a TrialSpec for a candidate (a name in tests/candidates/ or a path), with short limits.

    Keyword arguments override the test limits (a 3 s budget, 1 s grace, 512 MiB, 16 MiB output).
    `min_compute_share` is 0 unless asked: these tests are about the candidate's verdict, and a shared
    test host must not turn them into `starved` (tests/test_sandbox_starved_trials_are_not_results.py).
    """
    import uuid

    from sandbox.engine.limits import Limits
    from sandbox.verdict import TrialSpec

    def build(
        candidate: str | Path,
        *,
        profile: str = "tiny",
        seed: int = 0,
        min_compute_share: float = 0.0,
        **limits: object,
    ) -> TrialSpec:
        path = candidate if isinstance(candidate, Path) else CANDIDATES / f"{candidate}.py"
        trial_id = f"test-{path.stem.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        base: dict[str, object] = {
            "time_budget_s": 3,
            "kill_grace_s": 1,
            "mem_limit_mb": 512,
            "eval_mem_limit_mb": 2048,
            "output_limit_mb": 16,
            "eval_timeout_s": 180,
        }
        return TrialSpec(
            trial_id=trial_id,
            candidate=path,
            trial_dir=tmp_path / trial_id,
            profile=profile,
            limits=Limits.model_validate(base | limits),
            seed=seed,
            min_compute_share=min_compute_share,
        )

    return build


# --------------------------------------------------------------------------- preflight (isolation) fixtures


@pytest.fixture(scope="session")
def preflight_result(
    docker_client: docker.DockerClient, trainer_image: str, tiny_data: Path
) -> PreflightResult:
    """One preflight run under runc with the tiny production limits, shared by the
    tests/test_isolation_*.py files, each of which asserts on the observations of its own property
    (test_isolation_preflight_passes_under_runsc.py runs it again under gVisor)."""
    from sandbox.engine.limits import Limits
    from sandbox.preflight.runner import run_preflight

    limits = Limits.for_profile("tiny", runtime="runc")
    return run_preflight(docker_client, limits, tiny_data, profile="tiny", image=trainer_image)


# --------------------------------------------------------------------------- a real Ray cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    """A head (no trial slots) and two worker nodes (one slot each) on this host, started once per
    session with token authentication and stopped, every process of it by pid, at the end.

    Skips locally when ray is not installed (`pip install -e '.[ray]'`), but FAILS in CI, which
    installs it: the cluster tests run for real there.
    """
    import importlib.util
    import os

    if importlib.util.find_spec("ray") is None:
        reason = "ray is not installed: pip install -e '.[ray]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the cluster tests for real)", pytrace=False)
        pytest.skip(reason)
    from sandbox.cluster.local import start_cluster
    from sandbox.engine.gpu import host_cpus, split_cpusets
    from tests.ray_cluster import fresh_root, remove_root

    root = fresh_root()
    # One cpuset per node, as `make ray-local` gives them: two real trials side by side on the same CPUs
    # would each get half of their allotment and come back `starved` (sandbox/compute.py).
    cpus = host_cpus()
    cluster = start_cluster(root, 2, cpusets=list(split_cpusets(2, cpus)) if len(cpus) >= 2 else None)
    try:
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        remove_root(root)
