"""Remove the containers and volumes a dead controller left behind.

Every container and volume the sandbox creates carries LABEL_APP plus its owner's identity (host,
pid, process start time). A controller killed with SIGKILL never runs its `finally` blocks, so its
TRAIN container may still be burning CPU and its tmpfs volumes still holding memory. The reaper runs
at every DockerSandbox start-up and from `python -m harness reap`.

Deliberate choices:
- An owner is judged dead only when it is on this host (same hostname) and its pid is gone or now
  belongs to a younger process (pid reuse). Anything owned by another host or pid namespace is left
  alone unless `everything=True`: reaping a live trial of another worker would be far worse than
  leaking one until the next `reap --all`.
- Containers go first (a volume in use cannot be removed), then volumes.
- Each removal is its own step: one failure is logged and counted, the rest still happen.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.volumes import Volume

from sandbox import constants as C
from sandbox.retry import engine_errors, infra_retry

logger = logging.getLogger(__name__)


@dataclass
class ReapReport:
    """What one reaping pass found and did."""

    containers: list[str] = field(default_factory=list)  # names removed (or that would be, in a dry run)
    volumes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "name: why" for each removal that failed


@cache
def owner_labels() -> dict[str, str]:
    """The labels that identify this process as the owner of what it creates."""
    pid = os.getpid()
    return {
        C.LABEL_OWNER_PID: str(pid),
        C.LABEL_OWNER_HOST: socket.gethostname(),
        C.LABEL_OWNER_START: _start_time(pid) or "",
    }


def sandbox_labels(trial_id: str, role: str) -> dict[str, str]:
    """Labels for one container or volume of a trial."""
    return {C.LABEL_APP: C.LABEL_APP_VALUE, C.LABEL_TRIAL: trial_id, C.LABEL_ROLE: role} | owner_labels()


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may contain spaces: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_is_dead(labels: dict[str, str]) -> bool:
    """True only when we can tell the owner of these labels is gone; unknown owners count as alive."""
    if labels.get(C.LABEL_OWNER_HOST) != socket.gethostname():
        return False
    try:
        pid = int(labels.get(C.LABEL_OWNER_PID, ""))
    except ValueError:
        return False
    start = _start_time(pid)
    if start is None:
        return True
    recorded = labels.get(C.LABEL_OWNER_START)
    return bool(recorded) and recorded != start


def reap(client: docker.DockerClient, *, everything: bool = False, dry_run: bool = False) -> ReapReport:
    """Remove the sandbox's containers and volumes whose owner is dead (or all of them with `everything`)."""
    report = ReapReport()
    selector = {"label": f"{C.LABEL_APP}={C.LABEL_APP_VALUE}"}
    with engine_errors("listing the sandbox's containers"):
        containers: list[Container] = infra_retry(client.containers.list)(
            all=True,
            filters=selector,
            ignore_removed=True,  # another controller may be removing its own
        )
    for container in containers:
        if everything or owner_is_dead(container.labels):
            report.containers.append(container.name)
            if not dry_run:
                _remove(report, container.name, partial(container.remove, force=True, v=True))
    with engine_errors("listing the sandbox's volumes"):
        volumes: list[Volume] = infra_retry(client.volumes.list)(filters=selector)
    for volume in volumes:
        labels = volume.attrs.get("Labels") or {}
        if everything or owner_is_dead(labels):
            report.volumes.append(volume.name)
            if not dry_run:
                _remove(report, volume.name, partial(volume.remove, force=True))
    if report.containers or report.volumes:
        logger.info(
            "reaped %d containers and %d volumes%s",
            len(report.containers),
            len(report.volumes),
            " (dry run)" if dry_run else "",
        )
    return report


def _remove(report: ReapReport, name: str, remove: Callable[[], object]) -> None:
    try:
        infra_retry(remove)()
    except docker.errors.NotFound:
        pass  # gone already: another reaper or the engine's own cleanup got there first
    except docker.errors.APIError as exc:
        logger.warning("could not remove %s: %s", name, exc.explanation)
        report.failures.append(f"{name}: {exc.explanation}")
