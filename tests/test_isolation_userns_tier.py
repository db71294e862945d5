"""Property: the third hardening tier, user-namespace remapping, holds on an engine that has it.

On a second dockerd started with `--userns-remap=default` (sandbox/scripts/userns-engine.sh, `make
engine-userns`; CI starts it), reached through DOCKER_HOST exactly as a user would:
- `python -m harness preflight` passes every isolation check and reports tier "userns-remap", decided
  from the TRAIN probe's own /proc/self/uid_map, not from the engine's word alone;
- root inside a container (uid 0, as if a candidate had escalated) is, seen from the host (`docker top`
  and /proc/<pid>/status), an unprivileged host uid that belongs to no host account;
- a real trial (an honest candidate exporting at once) gets its verdict, so the output tmpfs, the holder
  and the data bind mounts all work under the remapping, and the reaper still finds what it labelled.
Attack defeated: a container escape (a kernel or runc bug) lands as host root under the other runc
tier; under this one it lands as uid 100000-ish, which owns nothing on the host.

Locally the docker tests skip, saying how to start the engine, when it is not up; under CI=true they
fail instead (tests/conftest.py engine_unusable). On a host where the script found that remapping
cannot work it recorded why in USERNS_UNSUPPORTED_FILE, and they skip with that reason: not a pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests.exceptions

from sandbox import constants as C
from sandbox.engine import reaper
from sandbox.engine.docker_config import remapped_root, resolve_image
from sandbox.engine.limits import Limits
from sandbox.preflight.facts import HardeningTier, PreflightResult
from sandbox.preflight.runner import userns_remapped
from sandbox.verdict import SandboxError
from tests.conftest import CANDIDATES, engine_unusable

ROOT = Path(__file__).resolve().parents[1]
USERNS_DOCKER_HOST = os.environ.get("USERNS_DOCKER_HOST", "unix:///var/run/docker-userns.sock")
UNSUPPORTED_FILE = Path(os.environ.get("USERNS_UNSUPPORTED_FILE", "/var/lib/docker-userns.unsupported"))
START = "start it with `make engine-userns` (root; sandbox/scripts/userns-engine.sh)"
IDENTITY_MAP = ((0, 0, 4294967295),)


# --------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def userns_client() -> docker.DockerClient:
    try:
        client = docker.DockerClient(base_url=USERNS_DOCKER_HOST, timeout=60)
        info = client.info()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if UNSUPPORTED_FILE.is_file():
            pytest.skip(f"userns-remap is not available on this host: {UNSUPPORTED_FILE.read_text().strip()}")
        engine_unusable(f"no userns-remap engine at {USERNS_DOCKER_HOST} ({type(exc).__name__}); {START}")
    if not any("name=userns" in opt for opt in info.get("SecurityOptions") or []):
        engine_unusable(f"the engine at {USERNS_DOCKER_HOST} does not remap user namespaces; {START}")
    return client


@pytest.fixture(scope="module")
def userns_image(userns_client: docker.DockerClient) -> str:
    try:
        return resolve_image(userns_client)
    except SandboxError as exc:
        engine_unusable(f"{exc}; on the userns-remap engine: {START}")


def _harness(*args: str, timeout_s: float) -> dict[str, Any]:
    """`python -m harness ARGS --json` against the userns engine (through DOCKER_HOST); its JSON line."""
    env = os.environ | {"DOCKER_HOST": USERNS_DOCKER_HOST, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit {proc.returncode}, no JSON line; stderr tail: {proc.stderr[-2000:]}"
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


# --------------------------------------------------------------------------- preflight reports the tier


@pytest.mark.docker
def test_preflight_passes_every_check_and_reports_the_userns_tier(
    userns_client: docker.DockerClient, userns_image: str, tiny_data: Path
) -> None:
    line = _harness("preflight", "--profile", "tiny", "--data-dir", str(tiny_data), timeout_s=300)
    result = PreflightResult.model_validate(line)
    failed = {c.name: c.detail for c in result.checks if not c.passed}
    assert failed == {}
    assert line["passed"] is True
    assert result.image_id == userns_image  # it really ran on the second engine
    assert result.runtime == "runc"
    assert result.tier is HardeningTier.USERNS_REMAP
    assert result.userns_remap is True
    # The kernel's map, seen inside the TRAIN probe: its uid 0 is the engine's remapped root on the host.
    inside, host, count = result.uid_map[0]
    assert (inside, host) == (0, remapped_root(userns_client)[0]) and host > 0
    assert count > Limits.for_profile("tiny").uid  # the sandbox's uid is inside the mapped range


@pytest.mark.docker
def test_the_default_engine_is_not_reported_as_remapped(preflight_result: PreflightResult) -> None:
    """The negative control: on the default engine the same detection says runc, identity map."""
    assert preflight_result.tier is HardeningTier.RUNC
    assert preflight_result.userns_remap is False
    assert preflight_result.uid_map == IDENTITY_MAP


@pytest.mark.parametrize(
    ("security_options", "uid_map", "remapped"),
    [
        (["name=seccomp,profile=default", "name=userns"], ((0, 100000, 65536),), True),
        # The engine's claim without the kernel's agreement is not the tier ...
        (["name=seccomp,profile=default", "name=userns"], IDENTITY_MAP, False),
        (["name=userns"], (), False),  # (the probe could not read its map)
        # ... nor a shifted map without the claim (e.g. a rootless engine: another tier, not this one).
        (["name=seccomp,profile=default", "name=rootless"], ((0, 1000, 1),), False),
        (["name=seccomp,profile=default"], IDENTITY_MAP, False),
    ],
)
def test_the_tier_needs_both_the_engine_and_the_uid_map(
    security_options: list[str], uid_map: tuple[tuple[int, int, int], ...], remapped: bool
) -> None:
    assert userns_remapped({"SecurityOptions": security_options}, {}, uid_map) is remapped


def test_a_container_that_opted_out_of_the_remapping_is_not_the_tier() -> None:
    info = {"SecurityOptions": ["name=userns"]}
    assert userns_remapped(info, {"UsernsMode": "host"}, ((0, 100000, 65536),)) is False


# --------------------------------------------------------------------------- root inside is nobody outside

ROOT_PROBE = """
import json, os, time
with open("/proc/self/uid_map") as f:
    uid_map = [[int(x) for x in line.split()] for line in f if line.strip()]
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "uid_map": uid_map}), flush=True)
time.sleep(120)
"""


def _host_uids(pid: int) -> list[int] | None:
    """Real, effective, saved and filesystem uid of a host process, from the host's /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next([int(x) for x in line.split()[1:]] for line in status.splitlines() if line.startswith("Uid:"))


@pytest.mark.docker
def test_container_root_is_an_unprivileged_host_uid(
    userns_client: docker.DockerClient, userns_image: str
) -> None:
    config = Limits.for_profile("tiny", runtime="runc").common_docker_kwargs(mem_limit_mb=128)
    config |= {"user": "0:0", "command": ["python", "-I", "-S", "-c", ROOT_PROBE]}  # as if it became root
    container = userns_client.containers.create(
        image=userns_image, labels=reaper.sandbox_labels("userns-root-probe", "probe"), **config
    )
    try:
        container.start()
        deadline = time.monotonic() + 60
        while not (logs := container.logs(stdout=True, stderr=False).decode()).strip():
            container.reload()
            assert container.status == "running", container.logs().decode()[-2000:]
            assert time.monotonic() < deadline, "the probe printed nothing in 60 s"
            time.sleep(0.2)
        inside = json.loads(logs.splitlines()[0])
        top = container.top(ps_args="-o pid,uid,args")
    finally:
        container.remove(force=True)

    assert (inside["uid"], inside["euid"]) == (0, 0)
    [[first_inside, first_host, count]] = inside["uid_map"]
    assert first_inside == 0 and first_host > 0 and count > 0
    assert first_host == remapped_root(userns_client)[0]

    titles = top["Titles"]
    rows = [dict(zip(titles, row, strict=True)) for row in top["Processes"]]
    assert any("time.sleep" in row["COMMAND"] for row in rows), rows  # the probe itself is among them
    for row in rows:
        host_uid = int(row["UID"])  # `ps` run by the engine on the host
        assert host_uid == first_host, row
        seen = _host_uids(int(row["PID"]))
        assert seen in (None, [first_host] * 4), (row, seen)  # the host's /proc agrees, where it is visible
    with pytest.raises(KeyError):
        pwd.getpwuid(first_host)  # no account on the host: the uid owns nothing there


# --------------------------------------------------------------------------- a real trial, the reaper


@pytest.mark.docker
def test_a_real_trial_gets_a_verdict_on_the_remapped_engine(
    userns_client: docker.DockerClient, userns_image: str, tiny_data: Path, tmp_path: Path
) -> None:
    verdict = _harness(
        "trial", str(CANDIDATES / "tiny_export.py"), "--profile", "tiny", "--data-dir", str(tiny_data),
        "--trial-dir", str(tmp_path / "trial"), "--time-budget", "120", timeout_s=600,
    )  # fmt: skip
    assert (verdict["status"], verdict["reason"]) == ("ok", "scored"), verdict.get("reason")
    assert math.isfinite(verdict["val_bpb"]) and verdict["val_bpb"] > 0
    assert verdict["images"]["trainer"] == userns_image
    # The engine's own record of TRAIN puts its files under the remapped engine's data root.
    train = json.loads(Path(verdict["logs"]["train_container"]).read_text())
    assert train["HostnamePath"].startswith(userns_client.info()["DockerRootDir"] + "/")
    assert train["State"]["ExitCode"] == 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.docker
def test_the_reaper_finds_a_dead_owner_s_leftovers_on_the_remapped_engine(
    userns_client: docker.DockerClient, userns_image: str
) -> None:
    labels = reaper.sandbox_labels("userns-reap", "train") | {C.LABEL_OWNER_PID: str(_dead_pid())}
    volume = userns_client.volumes.create(
        driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}, labels=labels
    )
    container = userns_client.containers.create(
        image=userns_image, command=["true"], network_mode="none", labels=labels
    )
    try:
        report = reaper.reap(userns_client)
        assert container.name in report.containers and volume.name in report.volumes
        assert report.failures == []
        with pytest.raises(docker.errors.NotFound):
            container.reload()
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove()
