"""Preflight's engine side: start the probe containers the production way, collect what they saw, judge.

`run_preflight` builds the TRAIN probe with DockerSandbox's own code (its output volume and TRAIN
config: same limits, environment and mounts), so it attacks the configuration trials really get, not a
copy that could drift. Three containers run side by side: the TRAIN probe (everything but the bombs);
a fork bomb with the production flags, alone so that whatever it does cannot hide the other facts; a
memory hog with the production flags but a small memory limit, so it is OOM-killed in a second.

Deliberate: the probe is sandbox/incontainer/preflight_probe.py, a real module, shipped as its source
text with `python -I -S -c` (the image need not hold it; nothing of its site-packages is imported).
Every probe container and volume carries the sandbox's labels (role "probe") and is removed in
`finally`; a killed preflight is cleaned up by the reaper like any trial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from sandbox import constants as C
from sandbox.engine import reaper, trialdir
from sandbox.engine.docker import DockerTrial
from sandbox.engine.docker_config import OUTPUT_MAX_INODES, RUNNING, resolve_image
from sandbox.engine.limits import Limits
from sandbox.incontainer import preflight_probe
from sandbox.preflight import host
from sandbox.preflight.checks import judge_all
from sandbox.preflight.facts import (
    FORK_BOMB_OVERSHOOT,
    FORK_BOMB_S,
    MEM_PROBE_ALLOC_FACTOR,
    MEM_PROBE_MB,
    MEM_PROBE_STEP_MB,
    PROBE_TIMEOUT_S,
    HardeningTier,
    Observed,
    PreflightResult,
    RuntimeUnavailable,
    parse_last_json,
    probe_params,
)
from sandbox.retry import engine_errors, infra_retry
from sandbox.verdict import TrialSpec

logger = logging.getLogger(__name__)

PROBE_ROLE = "probe"


@functools.cache
def probe_source() -> str:
    """The in-container probe's source text, as `python -c` runs it."""
    return Path(preflight_probe.__file__).read_text(encoding="utf-8")


def probe_command(mode: str, *args: str, python: str = "python") -> list[str]:
    """The command that runs one probe mode (train | pids | mem) isolated from site-packages and env."""
    return [python, "-I", "-S", "-c", probe_source(), mode, *args]


def run_preflight(
    client: docker.DockerClient,
    limits: Limits,
    data_dir: Path | None,
    *,
    profile: str = "tiny",
    image: str = C.TRAINER_IMAGE,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> PreflightResult:
    """Attack a TRAIN container built with `limits` from inside and judge every property.

    Raises `SandboxError` (EngineUnavailable, ImageMissing, DataMissing, RuntimeUnavailable) when the
    check itself cannot run; a property that does not hold is a failed `Check`, not an exception.
    """
    started = time.monotonic()
    with engine_errors("reading the engine's configuration"):
        info: dict[str, Any] = infra_retry(client.info)()
    runtimes = tuple(sorted(info.get("Runtimes") or {}))
    if limits.runtime is not None and limits.runtime not in runtimes:
        raise RuntimeUnavailable(
            f"runtime {limits.runtime!r} is not registered with the engine (it has {', '.join(runtimes)}); "
            "run `make engine` (sandbox/scripts/ensure-engine.sh registers runsc)"
        )
    image_id = resolve_image(client, image)
    data = trialdir.resolve_data_dir(data_dir, profile)
    val_fps = tuple(host.fingerprints(data / C.VAL_DIRNAME))
    train_fps = tuple(host.fingerprints(data / C.TRAIN_DIRNAME, limit=2))

    listener = host.HostListener()
    try:
        armed = tuple(listener.arm(host.host_addresses(client)))
        logger.info("host listener on port %d reachable at %s", listener.port, ", ".join(armed) or "nothing")
        with tempfile.TemporaryDirectory(prefix="preflight-") as tmp, host.canary_in_environment():
            controller_secrets = host.controller_secrets()
            params = probe_params(limits, armed, listener.port, val_fps, train_fps)
            runs = _run_probes(client, image_id, limits, data, profile, Path(tmp), params, timeout_s)
        accepted = tuple(listener.accepted())
    finally:
        listener.close()

    observed = Observed(
        **runs,
        armed=armed,
        listener_port=listener.port,
        accepted=accepted,
        controller_secrets=controller_secrets,
        val_fingerprints=val_fps,
        train_fingerprints=train_fps,
        data_dir=str(data),
        host_spawn_ok=_host_can_spawn(),
    )
    checks = judge_all(observed, limits)
    host_config = observed.probe_attrs.get("HostConfig") or {}
    runtime = str(host_config.get("Runtime") or info.get("DefaultRuntime") or "runc")
    uid_map = _uid_map(observed.probe)
    userns = userns_remapped(info, host_config, uid_map)
    if runtime == "runsc":
        tier = HardeningTier.RUNSC
    elif userns:
        tier = HardeningTier.USERNS_REMAP
    else:
        tier = HardeningTier.RUNC
    result = PreflightResult(
        checks=checks,
        tier=tier,
        runtime=runtime,
        default_runtime=str(info.get("DefaultRuntime") or ""),
        runtimes=runtimes,
        userns_remap=userns,
        uid_map=uid_map,
        engine_version=str(info.get("ServerVersion") or ""),
        cgroup_version=str(info.get("CgroupVersion") or ""),
        image=image,
        image_id=image_id,
        profile=profile,
        wall_s=round(time.monotonic() - started, 2),
    )
    for check in checks:
        (logger.info if check.passed else logger.error)("%s: %s", check.name, check.detail)
    return result


def _uid_map(probe: dict[str, Any]) -> tuple[tuple[int, int, int], ...]:
    """The TRAIN probe's /proc/self/uid_map as (inside, host, count) rows; () when it could not read it."""
    raw = (probe.get("identity") or {}).get("uid_map") if isinstance(probe.get("identity"), dict) else None
    if not isinstance(raw, list):
        return ()
    try:
        return tuple((int(a), int(b), int(n)) for a, b, n in raw)
    except (TypeError, ValueError):
        return ()


def userns_remapped(
    info: dict[str, Any], host_config: dict[str, Any], uid_map: tuple[tuple[int, int, int], ...]
) -> bool:
    """The TRAIN container really ran in a remapped user namespace: the engine says so ("name=userns" in
    SecurityOptions, and the container did not opt out with UsernsMode "host") AND the kernel agrees:
    the container's uid_map sends its uid 0 to a host uid other than 0. The engine's word alone is a
    claim; the identity map "0 0 4294967295" means no remapping whatever the engine says.
    """
    claimed = any("name=userns" in opt for opt in info.get("SecurityOptions") or [])
    claimed = claimed and host_config.get("UsernsMode") != "host"
    root_on_host = [outside for inside, outside, count in uid_map if inside == 0 and count > 0]
    observed = bool(root_on_host) and root_on_host[0] != 0
    if claimed != observed:
        logger.warning("userns-remap: the engine says %s, the container's uid_map is %s", claimed, uid_map)
    return claimed and observed


def _run_probes(
    client: docker.DockerClient,
    image_id: str,
    limits: Limits,
    data_dir: Path,
    profile: str,
    tmp: Path,
    params: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    """Run the TRAIN probe, the fork bomb and the memory hog side by side; always remove what was created.

    The TRAIN probe is built by DockerSandbox's own code (its output volume and TRAIN config), so
    preflight attacks the configuration trials really get, not a copy of it that could drift.
    """
    placeholder = tmp / "candidate.py"
    placeholder.write_text("# preflight: the probe runs with python -c; this file is only mounted\n")
    spec = TrialSpec(
        trial_id=f"preflight-{secrets.token_hex(3)}",
        candidate=placeholder,
        trial_dir=tmp / "trial",
        profile=profile,
        limits=limits,
    )
    trial = DockerTrial(
        client=client,
        image_id=image_id,
        spec=spec,
        trial_dir=spec.trial_dir,
        data_dir=data_dir,
        candidate=trialdir.stage_candidate(placeholder, spec.trial_dir),
    )
    mem_args = [str(MEM_PROBE_STEP_MB), str(MEM_PROBE_MB * MEM_PROBE_ALLOC_FACTOR)]
    pids_args = [str(limits.pids_limit + FORK_BOMB_OVERSHOOT), str(FORK_BOMB_S)]
    try:
        with engine_errors("creating the probe containers"):
            out = trial.volume("out", limits.output_limit_mb, OUTPUT_MAX_INODES)
            config = trial.train_config(out)
            config["command"] = probe_command("train", json.dumps(params))
            probe = _create(trial, "probe", config)
            mem_config = limits.common_docker_kwargs(mem_limit_mb=MEM_PROBE_MB)
            mem_config["command"] = probe_command("mem", *mem_args)
            mem = _create(trial, "probe-mem", mem_config)
            pids_config = limits.common_docker_kwargs(mem_limit_mb=limits.mem_limit_mb)
            pids_config["command"] = probe_command("pids", *pids_args)
            pids = _create(trial, "probe-pids", pids_config)
        with engine_errors("running the probes"):
            for container in (probe, pids, mem):
                container.start()
            timed_out = _wait_all((probe, pids, mem), timeout_s)
            probe_log = host.text(infra_retry(probe.logs)(stdout=True, stderr=True))
            probe_out = host.text(infra_retry(probe.logs)(stdout=True, stderr=False))
            pids_log = host.text(infra_retry(pids.logs)(stdout=True, stderr=True))
            mem_log = host.text(infra_retry(mem.logs)(stdout=True, stderr=True))
        return {
            "probe": parse_last_json(probe_out) or {},
            "probe_attrs": probe.attrs,
            "probe_log_tail": probe_log[-2000:],
            "pids_attrs": pids.attrs,
            "pids_log": pids_log[-4000:],
            "mem_attrs": mem.attrs,
            "mem_log": mem_log[-4000:],
            "timed_out": tuple(c.name for c in timed_out),
        }
    finally:
        trial.cleanup()


def _create(trial: DockerTrial, name: str, config: dict[str, Any]) -> Container:
    """A container of the trial (removed by its cleanup) labelled with the probe role."""
    container: Container = infra_retry(trial.client.containers.create)(
        image=trial.image_id,
        name=trial.container_name(name),
        labels=reaper.sandbox_labels(trial.spec.trial_id, PROBE_ROLE),
        **config,
    )
    trial.containers.append(container)
    return container


def _wait_all(containers: tuple[Container, ...], timeout_s: float) -> list[Container]:
    """Poll until every container exited; kill those still running at the deadline and return them."""
    deadline = time.monotonic() + timeout_s
    pending = list(containers)
    while pending and time.monotonic() < deadline:
        for container in list(pending):
            infra_retry(container.reload)()
            if container.status not in RUNNING:
                pending.remove(container)
        if pending:
            time.sleep(0.1)
    for container in pending:
        logger.error("probe %s still running after %.0f s: killing it", container.name, timeout_s)
        with contextlib.suppress(docker.errors.APIError):
            container.kill()
        container.reload()
    return pending


def _host_can_spawn() -> bool:
    """The host itself can still start a process after the fork bomb (its pids are not exhausted)."""
    import subprocess

    try:
        return subprocess.run([sys.executable, "-c", "pass"], timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
