"""The judges of the resource limits: the fork bomb, the memory hog, the output cap, the engine's flags.

Each is decided from what the controller saw: the bomb's and the hog's logs and the engine's record
of their containers, the TRAIN probe's write count, and the engine's inspected HostConfig. Known
runtime differences are named where they are accepted (gVisor's sentry dying as a whole at the pids
limit; the engine missing gVisor's OOM event), never silently.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox import constants as C
from sandbox.engine.limits import Limits, MiB
from sandbox.preflight.facts import (
    MEM_PROBE_MB,
    OUTPUT_FULL_ERRNOS,
    PROBE_TIMEOUT_S,
    Check,
    Observed,
    not_proven,
    parse_last_json,
    section,
)

logger = logging.getLogger(__name__)

PIDS_SLACK = 32  # tasks the container has before the bomb (init, the probe, threads) and rounding


class _PidsReport(BaseModel):
    """The fork bomb's final line, when its container survived it."""

    model_config = ConfigDict(frozen=True)

    forked: int
    stopped_by: str
    elapsed_s: float
    fork_after: bool
    pids_max: str | None


def check_pids_limit(obs: Observed, limits: Limits) -> Check:
    """A fork bomb gets at most pids_limit tasks and leaves the host able to start processes.

    Under runc the kernel refuses fork #pids_limit-ish with EAGAIN and the container survives. Under
    gVisor the pids cgroup also counts the sentry's own Go threads (one or more per guest task on the
    ptrace platform), so the sentry dies with "failed to create new OS thread" long before the guest
    reaches the limit (google/gvisor#2490): the whole sandbox exits, which still contains the bomb. That
    outcome passes only under runsc and is named as such; anywhere else a dead container fails.
    """
    name = "pids_limit"
    state = obs.pids_attrs.get("State") or {}
    runtime = (obs.pids_attrs.get("HostConfig") or {}).get("Runtime")
    raw = parse_last_json(obs.pids_log)
    try:
        report = _PidsReport.model_validate(raw) if raw is not None else None
    except ValidationError:
        return Check(name=name, passed=False, detail=f"not proven: malformed fork bomb report {raw!r}")
    progress = [int(line.split()[1]) for line in obs.pids_log.splitlines() if line.startswith("forked ")]
    forked = report.forked if report else max(progress, default=0)
    problems, how = [], ""
    if not obs.host_spawn_ok:
        problems.append("the host could not start a process afterwards")
    if forked >= limits.pids_limit:
        problems.append(f"{forked} forks succeeded, at least pids_limit {limits.pids_limit}")
    if report is not None:
        how = f"fork #{forked + 1} failed with {report.stopped_by} after {report.elapsed_s} s"
        if report.stopped_by != "EAGAIN":
            problems.append(f"the fork bomb stopped by {report.stopped_by} after {forked} forks, not EAGAIN")
        elif forked < limits.pids_limit - PIDS_SLACK:
            problems.append(f"EAGAIN after only {forked} forks: a limit other than pids_limit bit")
        if not report.fork_after:
            problems.append("the container could not fork after the bomb was defused")
        if state.get("ExitCode") != 0:
            problems.append(f"the probe exited {state.get('ExitCode')}")
    elif str(obs.pids_attrs.get("Name", "")).lstrip("/") in obs.timed_out:
        problems.append(f"the fork bomb was still running after {PROBE_TIMEOUT_S:.0f} s")
    elif runtime == "runsc" and not state.get("OOMKilled") and state.get("ExitCode") not in (0, None):
        how = (
            f"the gVisor sandbox died as a whole (exit {state.get('ExitCode')}) after {forked} forks: "
            "the sentry's threads share the pids limit (google/gvisor#2490)"
        )
    else:
        problems.append(
            f"the container died (exit {state.get('ExitCode')}, OOMKilled {state.get('OOMKilled')}) "
            f"after {forked} forks; log {obs.pids_log[-200:]!r}"
        )
    detail = "; ".join(problems) or f"{how}; pids_limit {limits.pids_limit}; the host still starts processes"
    evidence = {
        "forked": forked,
        "stopped_by": report.stopped_by if report else None,
        "container_survived": report is not None,
        "fork_after": report.fork_after if report else None,
        "pids_max": report.pids_max if report else None,
        "pids_limit": limits.pids_limit,
        "exit_code": state.get("ExitCode"),
        "runtime": runtime,
        "host_spawn_ok": obs.host_spawn_ok,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_memory_limit(obs: Observed, limits: Limits) -> Check:
    """Touching memory past the limit gets the container SIGKILLed below the limit, flagged OOMKilled.

    Under gVisor the engine sometimes misses the OOM event and reports exit 137 without the flag (about
    one run in six here); the SIGKILL below the limit, with nothing else that could have sent it, still
    proves the limit held, so that case passes under runsc and says so. Under runc the flag is required.
    """
    name = "memory_limit"
    state = obs.mem_attrs.get("State") or {}
    runtime = (obs.mem_attrs.get("HostConfig") or {}).get("Runtime")
    allocated = [int(line) for line in obs.mem_log.split() if line.isdigit()]
    peak = max(allocated, default=0)
    survived = "survived" in obs.mem_log
    killed = (
        state.get("ExitCode") == 128 + 9
        and str(obs.mem_attrs.get("Name", "")).lstrip("/") not in obs.timed_out
    )
    problems = []
    if survived or peak > MEM_PROBE_MB:
        problems.append(f"allocated {peak} MiB past the {MEM_PROBE_MB} MiB limit")
    if not allocated:
        problems.append(f"the memory probe allocated nothing (log {obs.mem_log[-200:]!r})")
    if state.get("OOMKilled"):
        how = f"OOMKilled, exit {state.get('ExitCode')}"
    elif runtime == "runsc" and killed:
        how = "SIGKILLed, exit 137; the engine missed the OOM event, as it sometimes does under runsc"
    else:
        how = ""
        problems.append(f"the engine did not report OOMKilled (exit {state.get('ExitCode')})")
    detail = "; ".join(problems) or (
        f"{how}, after touching {peak} MiB under a {MEM_PROBE_MB} MiB limit "
        f"(TRAIN's own {limits.mem_limit_mb} MiB is in hardening_flags)"
    )
    evidence = {
        "oom_killed": state.get("OOMKilled"),
        "exit_code": state.get("ExitCode"),
        "runtime": runtime,
        "allocated_mib": peak,
        "limit_mib": MEM_PROBE_MB,
        "survived": survived,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_output_cap(obs: Observed, limits: Limits) -> Check:
    """Writing past the output channel's cap fails (ENOSPC/EFBIG) at the configured size."""
    name = "output_cap"
    out, why = section(obs, "output")
    if out is None:
        return not_proven(name, why)
    cap = limits.output_limit_mb * MiB
    problems = []
    if out["stopped_by"] not in OUTPUT_FULL_ERRNOS:
        problems.append(f"wrote {out['written'] / MiB:.0f} MiB without hitting a cap ({out['stopped_by']})")
    if out["written"] > cap + MiB:
        problems.append(f"wrote {out['written'] / MiB:.1f} MiB, above the {limits.output_limit_mb} MiB cap")
    if out["written"] < 0.9 * cap:
        problems.append(
            f"stopped at {out['written'] / MiB:.1f} MiB, well below the configured {limits.output_limit_mb} MiB"
        )
    detail = "; ".join(problems) or (
        f"write failed with {out['stopped_by']} after {out['written'] / MiB:.1f} MiB (cap {limits.output_limit_mb} MiB)"
    )
    return Check(name=name, passed=not problems, detail=detail, evidence=out | {"cap_bytes": cap})


def check_hardening_flags(obs: Observed, limits: Limits) -> Check:
    """The engine's own record of the TRAIN probe carries every hardening flag with the production values."""
    name = "hardening_flags"
    host = obs.probe_attrs.get("HostConfig") or {}
    config = obs.probe_attrs.get("Config") or {}
    mem = limits.mem_limit_mb * MiB
    expected: dict[str, tuple[Any, bool]] = {
        "NetworkMode": (host.get("NetworkMode"), host.get("NetworkMode") == "none"),
        "ReadonlyRootfs": (host.get("ReadonlyRootfs"), host.get("ReadonlyRootfs") is True),
        "CapDrop": (host.get("CapDrop"), [c.upper() for c in host.get("CapDrop") or []] == ["ALL"]),
        "CapAdd": (host.get("CapAdd"), not host.get("CapAdd")),
        "Privileged": (host.get("Privileged"), host.get("Privileged") is False),
        "SecurityOpt": (
            host.get("SecurityOpt"),
            any(o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or []),
        ),
        "PidsLimit": (host.get("PidsLimit"), host.get("PidsLimit") == limits.pids_limit),
        "Memory": (host.get("Memory"), host.get("Memory") == mem),
        "MemorySwap": (host.get("MemorySwap"), host.get("MemorySwap") == mem),
        "Devices": (host.get("Devices"), not host.get("Devices")),
        "User": (config.get("User"), config.get("User") == f"{limits.uid}:{limits.gid}"),
    }
    rw_mounts = [m.get("Destination") for m in obs.probe_attrs.get("Mounts") or [] if m.get("RW")]
    bad = [f"{k}={v!r}" for k, (v, ok) in expected.items() if not ok]
    if rw_mounts != [C.CONTAINER_OUT]:
        bad.append(f"writable mounts {rw_mounts}, expected only {C.CONTAINER_OUT}")
    detail = "; ".join(bad) or (
        f"network none, read-only root, CapDrop ALL, no-new-privileges, pids {limits.pids_limit}, "
        f"memory = swap = {limits.mem_limit_mb} MiB, user {limits.uid}:{limits.gid}, only {C.CONTAINER_OUT} writable"
    )
    evidence = {k: v for k, (v, _) in expected.items()} | {"rw_mounts": rw_mounts}
    return Check(name=name, passed=not bad, detail=detail, evidence=evidence)
