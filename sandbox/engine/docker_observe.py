"""What the controller reads of a Docker trial from outside its containers: memory, the output channel, the report.

Deliberate properties:
- Memory is measured by the controller (engine stats sampled in a thread), never taken from the
  candidate's printout: the cgroup's peak, page cache and the output tmpfs included.
- The output channel and the report are read through the trusted holder (exec, `get_archive`), so
  the controller never needs the engine's files on the host; the report is size-capped while read.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions
from docker.models.containers import Container

from sandbox import constants as C
from sandbox.engine.docker_config import API_TIMEOUT_S, OUTPUT_PROBE, REPORT_PATH
from sandbox.engine.limits import Limits, MiB
from sandbox.incontainer.fileio import atomic_write
from sandbox.report import EvalReport, parse_report
from sandbox.retry import infra_retry
from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5


def inspect_output(holder: Container, limits: Limits) -> dict[str, Any]:
    """How full the output channel is and whether model.pt2 is a regular file, seen from the holder."""
    uid = f"{limits.uid}:{limits.gid}"
    result = infra_retry(holder.exec_run)(["python", "-I", "-S", "-c", OUTPUT_PROBE], user=uid)
    try:
        channel: dict[str, Any] = json.loads(result.output)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SandboxError(
            f"could not inspect the output channel (exit {result.exit_code}): {result.output!r}"
        ) from exc
    return channel


def fetch_report(
    holder: Container, limits: Limits, trial_dir: Path, logs: dict[str, Path]
) -> tuple[EvalReport | None, str]:
    """The evaluator's report from the report channel, size-capped and parsed; or None and why not.

    The bytes read are kept verbatim in the trial folder (`logs["report"]`).
    """
    cap = limits.report_limit_mb * MiB
    try:
        chunks, stat = infra_retry(holder.get_archive)(REPORT_PATH)
    except docker.errors.NotFound:
        return None, "no report was written"
    if int(stat.get("size", 0)) > cap:
        return None, f"the report is larger than {cap} bytes"
    archive = bytearray()
    for chunk in chunks:
        archive += chunk
        if len(archive) > cap + MiB:  # tar headers and padding are far smaller than a MiB
            return None, f"the report archive is larger than {cap} bytes"
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(archive))) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                return None, "the report is not a regular file"
            stream = tar.extractfile(member)
            raw = stream.read(cap + 1) if stream is not None else b""
    except tarfile.TarError as exc:
        return None, f"unreadable report archive: {exc}"
    atomic_write(trial_dir / C.REPORT_FILE, raw, durable=False)
    logs["report"] = trial_dir / C.REPORT_FILE
    return parse_report(raw)


class MemoryWatcher:
    """Samples a container's memory from the engine in a thread and keeps the peak it saw."""

    def __init__(self, container: Container, interval_s: float = STATS_INTERVAL_S) -> None:
        self._container = container
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mem-{container.name}", daemon=True)
        self.peak_bytes: int | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=API_TIMEOUT_S)

    def _loop(self) -> None:
        one_shot: bool | None = True  # one sample, no 1 s wait for a second one (API >= 1.41)
        while not self._stopped.is_set():
            try:
                stats = self._container.stats(stream=False, one_shot=one_shot)
            except docker.errors.InvalidVersion:
                one_shot = None  # an older engine: slower samples, same numbers
                continue
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                logger.debug("memory sample of %s failed: %s", self._container.name, exc)
            else:
                memory = stats.get("memory_stats") or {}
                # cgroup v1 reports the kernel's own peak (max_usage); v2 only the current usage.
                sample = max(int(memory.get("max_usage") or 0), int(memory.get("usage") or 0))
                if sample:
                    self.peak_bytes = max(self.peak_bytes or 0, sample)
            self._stopped.wait(self._interval_s)
