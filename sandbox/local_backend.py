"""LocalSandbox: the trial's two steps as plain host processes. IT ISOLATES NOTHING.

!!! Never run an untrusted candidate with this backend. !!!
The candidate runs as you, with your files, your network, your environment's interpreter, and it can
read the validation split, the evaluator and everything else on the disk. There is no memory limit
(so never `oom`), the output cap is checked only after the fact, and a process can escape the
clock by leaving the process group.

What it is for: the controller's unit tests and CI steps that must not need an engine, and the
bare-process comparison point of bench/overhead.py. To make those comparisons honest it follows the
Docker backend's contract step for step: the same environment variables (built from scratch, not
inherited), a data view with only train/ and tokenizer/, the same clock (SIGTERM to the candidate at
the budget, SIGKILL to its process group after the grace), the same capped logs, the same
`python -m sandbox.incontainer.evaluate` command line, the same classification functions and the same verdict file.
It measures what TRAIN got of its CPUs the same way too (sandbox/compute.py, over the process tree of
the candidate, on the CPUs of its affinity), so a starved trial is `starved` here as well.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sandbox import audit, trialdir
from sandbox import constants as C
from sandbox.compute import ComputeMeter, ComputeReport, ProcessTree, allotment
from sandbox.constants import Status
from sandbox.limits import MiB
from sandbox.report import EvalReport, parse_report
from sandbox.verdict import (
    EvalOutcome,
    SandboxError,
    TrainOutcome,
    TrialSpec,
    Verdict,
    classify_eval,
    classify_starved,
    classify_train,
)

logger = logging.getLogger(__name__)

REPO_ROOT = (
    Path(__file__).resolve().parents[1]
)  # holds prepare.py and sandbox/: the image's /opt/autoresearch
WORK_DIRNAME = "local"  # inside the trial folder: out/, home/ and the data view
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL_S = 0.02


class LocalSandbox:
    """Runs trials as host subprocesses. Isolates nothing (see the module docstring)."""

    name = "local"

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        python: str = sys.executable,
        evaluator: Sequence[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.python = python
        # The evaluator's command without its arguments; tests substitute a fake one.
        self.evaluator = list(evaluator) if evaluator is not None else [python, "-m", C.EVALUATOR_MODULE]

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        started = time.monotonic()
        trial_dir = spec.trial_dir.resolve()
        trial_dir.mkdir(parents=True, exist_ok=True)
        with trialdir.trial_log(trial_dir / C.SANDBOX_LOG_FILE):
            data_dir = trialdir.resolve_data_dir(self.data_dir, spec.profile)
            candidate = trialdir.stage_candidate(spec.candidate, trial_dir)
            trail = audit.AuditTrail(trial_dir, spec.trial_id)
            trail.start(spec, backend=self.name)
            try:
                verdict = self._run_trial(spec, trial_dir, data_dir, candidate, trail, started)
            except SandboxError as exc:
                trail.infrastructure_error(exc)
                raise
            trail.verdict(verdict)
            return verdict

    def _run_trial(
        self,
        spec: TrialSpec,
        trial_dir: Path,
        data_dir: Path,
        candidate: Path,
        trail: audit.AuditTrail,
        started: float,
    ) -> Verdict:
        limits = spec.limits
        timings: dict[str, float] = {}
        logs: dict[str, Path] = {}
        work = trial_dir / WORK_DIRNAME
        shutil.rmtree(work, ignore_errors=True)
        out, home, view = work / "out", work / "home", work / "data"
        for folder in (out, home, view):
            folder.mkdir(parents=True)
        out.chmod(0o700)
        for name in (C.TRAIN_DIRNAME, C.TOKENIZER_DIRNAME):  # never val/: same view as TRAIN's mounts
            (view / name).symlink_to(data_dir / name, target_is_directory=True)
        env = self._env(spec, home, view) | {C.ENV_OUT: str(out)}
        timings["setup_s"] = time.monotonic() - started

        train = _run(
            [self.python, str(candidate)],
            env=env,
            cwd=work,
            budget_s=limits.time_budget_s,
            grace_s=limits.kill_grace_s,
            log_limit=limits.log_limit_bytes,
            measure=True,
        )
        timings["train_wall_s"] = train.wall_s
        logs["train"] = trial_dir / C.TRAIN_LOG_FILE
        logs["train"].write_bytes(train.log)
        used, artifact = _output_usage(out)
        outcome = TrainOutcome(
            exit_code=train.exit_code,
            sigterm_sent=train.sigterm_sent,
            sigkilled=train.sigkilled,
            output_full=used >= limits.output_limit_mb * MiB,
            artifact_present=artifact,
            wall_s=train.wall_s,
        )
        logger.info("TRAIN outcome: %s; output bytes %d", outcome, used)
        trail.train(outcome, limits, signals=train.signals)
        report: EvalReport | None = None
        if train.compute is not None:
            logger.info("TRAIN %s", train.compute.summary())
        early = classify_starved(train.compute, spec.min_compute_share) or classify_train(outcome)
        if early is not None:
            status, val_bpb, reason = early[0], None, early[1]
        else:
            status, val_bpb, reason, report = self._evaluate(spec, out, home, data_dir, timings, logs, trail)
        teardown_start = time.monotonic()
        shutil.rmtree(out, ignore_errors=True)  # the artifact is the evaluator's input, not a record
        timings["teardown_s"] = time.monotonic() - teardown_start
        timings["total_s"] = time.monotonic() - started
        return trialdir.finish(
            spec,
            backend=self.name,
            status=status,
            val_bpb=val_bpb,
            reason=reason,
            train_log=train.log,
            timings=timings,
            peak_memory_bytes=train.peak_rss_bytes,
            images={},
            logs=logs,
            report=report,
            compute=train.compute,
        )

    def _evaluate(
        self,
        spec: TrialSpec,
        out: Path,
        home: Path,
        data_dir: Path,
        timings: dict[str, float],
        logs: dict[str, Path],
        trail: audit.AuditTrail,
    ) -> tuple[Status, float | None, str, EvalReport | None]:
        """EVAL as a host process: the evaluator's command line as in the container, the full data dir."""
        limits = spec.limits
        report_path = spec.trial_dir.resolve() / C.REPORT_FILE
        report_path.unlink(missing_ok=True)
        args = ["--profile", spec.profile, "--artifact", str(out), "--report", str(report_path)]
        args += ["--data", str(data_dir), "--device", "cuda" if spec.gpu_ids else "cpu"]
        ev = _run(
            [*self.evaluator, *args],
            env=self._env(spec, home, data_dir),
            cwd=REPO_ROOT,
            budget_s=limits.eval_timeout_s,
            grace_s=None,
            log_limit=limits.log_limit_bytes,
        )
        timings["eval_wall_s"] = ev.wall_s
        logs["eval"] = report_path.with_name(C.EVAL_LOG_FILE)
        logs["eval"].write_bytes(ev.log)
        logs["report"] = report_path
        report, report_error = _read_report(report_path, limits.report_limit_mb * MiB)
        outcome = EvalOutcome(
            exit_code=ev.exit_code,
            timed_out=ev.sigkilled,
            report=report,
            report_error=report_error,
            wall_s=ev.wall_s,
        )
        trail.eval(outcome, limits, signals=ev.signals)
        status, val_bpb, reason = classify_eval(outcome)
        return status, val_bpb, reason, report

    def _env(self, spec: TrialSpec, home: Path, data: Path) -> dict[str, str]:
        """Built from scratch like the containers' environment: nothing of the controller's leaks in."""
        return {
            "PATH": SAFE_PATH,
            "HOME": str(home),
            "TMPDIR": str(home),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            C.ENV_PROFILE: spec.profile,
            C.ENV_DATA: str(data),
            C.ENV_SEED: str(spec.seed),
        }


@dataclass
class _Process:
    exit_code: int | None  # None when the controller killed it; 128+N for death by signal N
    sigterm_sent: bool
    sigkilled: bool
    wall_s: float
    log: bytes
    peak_rss_bytes: int | None
    # signal -> (seconds after the start, epoch time), as the controller sent it
    signals: dict[str, tuple[float, float]] = field(default_factory=dict)
    compute: ComputeReport | None = None  # with `measure`: what it got of its CPUs (sandbox/compute.py)


def _run(
    cmd: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    budget_s: float,
    grace_s: float | None,
    log_limit: int,
    measure: bool = False,
) -> _Process:
    """Run one process with the controller's clock; its stdout and stderr are kept, capped, in memory.

    With `measure`, its process tree's share of the CPUs it may use (its affinity) is sampled."""
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so SIGKILL reaches its children too
        )
    except OSError as exc:
        raise SandboxError(f"could not start {cmd[0]}: {exc}") from exc
    assert proc.stdout is not None
    reader = _TailReader(proc.stdout, log_limit)
    start = time.monotonic()
    kill_at = budget_s if grace_s is None else budget_s + grace_s
    sigterm_sent = sigkilled = False
    signals: dict[str, tuple[float, float]] = {}
    peak_rss: int | None = None
    meter: ComputeMeter | None = None
    if measure:
        meter = ComputeMeter(ProcessTree(proc.pid), allotment(set(os.sched_getaffinity(proc.pid)), None))
        meter.start()
    try:
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            # VmHWM, not wait4's ru_maxrss: the latter also counts the controller's pages the child
            # had between fork and exec. Only the main process is measured.
            sample = _peak_rss(proc.pid)
            if sample is not None:
                peak_rss = max(peak_rss or 0, sample)
            now = time.monotonic() - start
            if grace_s is not None and not sigterm_sent and now >= budget_s:
                os.kill(proc.pid, signal.SIGTERM)  # the candidate only, as docker-init forwards it
                sigterm_sent = True
                signals["SIGTERM"] = (now, time.time())
            if not sigkilled and now >= kill_at:
                _killpg(proc.pid)
                sigkilled = True
                signals["SIGKILL"] = (now, time.time())
            time.sleep(POLL_S)
    except BaseException:  # an interrupted controller takes the process group down before unwinding
        _killpg(proc.pid)
        if meter is not None:
            meter.stop()
        raise
    wall = time.monotonic() - start
    compute = meter.stop() if meter is not None else None
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; keeps Popen from waiting again
    _killpg(proc.pid)  # whatever it left behind dies with it, as in a container
    reader.join()
    return _Process(
        exit_code=None if sigkilled else (128 - code if code < 0 else code),
        sigterm_sent=sigterm_sent,
        sigkilled=sigkilled,
        wall_s=wall,
        log=reader.text(),
        peak_rss_bytes=peak_rss,
        signals=signals,
        compute=compute,
    )


def _peak_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is empty: everything in it has exited


class _TailReader:
    """Drains a pipe in a thread, keeping only the last `limit` bytes (like the engine's log rotation)."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self._pipe, self._limit = pipe, limit
        self._buf = bytearray()
        self._dropped = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._pipe:
            while chunk := os.read(self._pipe.fileno(), 65536):
                self._buf += chunk
                if len(self._buf) > 2 * self._limit:
                    excess = len(self._buf) - self._limit
                    self._dropped += excess
                    del self._buf[:excess]

    def join(self) -> None:
        self._thread.join(timeout=10)

    def text(self) -> bytes:
        return trialdir.keep_tail(bytes(self._buf), self._limit, self._dropped)


def _output_usage(out: Path) -> tuple[int, bool]:
    """Bytes written under the output folder (symlinks not followed) and whether model.pt2 is a regular file."""
    used = 0
    for root, _dirs, files in os.walk(out):
        for name in files:
            try:
                used += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    artifact = out / C.ARTIFACT_FILE
    return used, artifact.is_file() and not artifact.is_symlink()


def _read_report(path: Path, cap: int) -> tuple[EvalReport | None, str]:
    try:
        with path.open("rb") as f:
            raw = f.read(cap + 1)
    except FileNotFoundError:
        return None, "no report was written"
    if len(raw) > cap:
        return None, f"the report is larger than {cap} bytes"
    return parse_report(raw)
