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

import contextlib
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

from sandbox import constants as C
from sandbox.compute import ComputeMeter, ComputeReport, ProcessTree, allotment
from sandbox.engine import trialdir
from sandbox.engine.base import EvalResult, StagedTrial, TrainResult
from sandbox.engine.limits import MiB
from sandbox.engine.trial import run_trial
from sandbox.report import EvalReport, parse_report
from sandbox.verdict import EvalOutcome, SandboxError, TrainOutcome, TrialCancelled, TrialSpec, Verdict

logger = logging.getLogger(__name__)

REPO_ROOT = (
    Path(__file__).resolve().parents[2]
)  # holds prepare.py and sandbox/: the image's /opt/autoresearch
WORK_DIRNAME = "local"  # inside the trial folder: out/, home/ and the data view
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
POLL_S = 0.02
KILL_CONFIRM_S = 10.0  # how long a cancelled, SIGKILLed candidate may take to be reaped


class LocalSandbox:
    """Runs trials as host subprocesses. Isolates nothing (see the module docstring).

    The `Sandbox` (sandbox/engine/backend.py) and the `Engine` (sandbox/engine/base.py) of host processes.
    """

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

    @property
    def images(self) -> dict[str, str]:
        return {}  # no image: the host's interpreter runs both steps

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        return run_trial(self, spec, cancel)

    def open(self, staged: StagedTrial) -> LocalTrial:
        return LocalTrial(staged, self.python, self.evaluator)


@dataclass
class LocalTrial:
    """One trial as host processes (an `EngineTrial`): a scratch folder with out/, home/ and a data view."""

    staged: StagedTrial
    python: str
    evaluator: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.staged.trial_dir / WORK_DIRNAME

    def train(self, cancel: threading.Event) -> TrainResult:
        spec, limits = self.staged.spec, self.staged.spec.limits
        work = self.work
        shutil.rmtree(work, ignore_errors=True)
        out, home, view = work / "out", work / "home", work / "data"
        for folder in (out, home, view):
            folder.mkdir(parents=True)
        out.chmod(0o700)
        for name in (C.TRAIN_DIRNAME, C.TOKENIZER_DIRNAME):  # never val/: same view as TRAIN's mounts
            (view / name).symlink_to(self.staged.data_dir / name, target_is_directory=True)
        env = _env(spec, home, view) | {C.ENV_OUT: str(out)}
        self.timings["setup_s"] = time.monotonic() - self.staged.started

        train = _run(
            [self.python, str(self.staged.candidate)],
            cancel,
            env=env,
            cwd=work,
            budget_s=limits.time_budget_s,
            grace_s=limits.kill_grace_s,
            log_limit=limits.log_limit_bytes,
            measure=True,
        )
        self.timings["train_wall_s"] = train.wall_s
        self.logs["train"] = self.staged.trial_dir / C.TRAIN_LOG_FILE
        self.logs["train"].write_bytes(train.log)
        used, artifact = _output_usage(out)
        logger.info("TRAIN output bytes %d", used)
        outcome = TrainOutcome(
            exit_code=train.exit_code,
            sigterm_sent=train.sigterm_sent,
            sigkilled=train.sigkilled,
            output_full=used >= limits.output_limit_mb * MiB,
            artifact_present=artifact,
            wall_s=train.wall_s,
        )
        return TrainResult(
            outcome, train.log, train.signals, peak_memory_bytes=train.peak_rss_bytes, compute=train.compute
        )

    def evaluate(self, cancel: threading.Event) -> EvalResult:
        """EVAL as a host process: the evaluator's command line as in the container, the full data dir."""
        spec, limits = self.staged.spec, self.staged.spec.limits
        out, home, data_dir = self.work / "out", self.work / "home", self.staged.data_dir
        report_path = self.staged.trial_dir / C.REPORT_FILE
        report_path.unlink(missing_ok=True)
        args = ["--profile", spec.profile, "--artifact", str(out), "--report", str(report_path)]
        args += ["--data", str(data_dir), "--device", "cuda" if spec.gpu_ids else "cpu"]
        ev = _run(
            [*self.evaluator, *args],
            cancel,
            env=_env(spec, home, data_dir),
            cwd=REPO_ROOT,
            budget_s=limits.eval_timeout_s,
            grace_s=None,
            log_limit=limits.log_limit_bytes,
        )
        self.timings["eval_wall_s"] = ev.wall_s
        self.logs["eval"] = report_path.with_name(C.EVAL_LOG_FILE)
        self.logs["eval"].write_bytes(ev.log)
        self.logs["report"] = report_path
        report, report_error = _read_report(report_path, limits.report_limit_mb * MiB)
        outcome = EvalOutcome(
            exit_code=ev.exit_code,
            timed_out=ev.sigkilled,
            report=report,
            report_error=report_error,
            wall_s=ev.wall_s,
        )
        return EvalResult(outcome, ev.signals)

    def cleanup(self) -> None:
        """The artifact is the evaluator's input, not a record: remove the output folder."""
        shutil.rmtree(self.work / "out", ignore_errors=True)


def _env(spec: TrialSpec, home: Path, data: Path) -> dict[str, str]:
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
    cancel: threading.Event,
    *,
    env: dict[str, str],
    cwd: Path,
    budget_s: float,
    grace_s: float | None,
    log_limit: int,
    measure: bool = False,
) -> _Process:
    """Run one process with the controller's clock; its stdout and stderr are kept, capped, in memory.

    With `measure`, its process tree's share of the CPUs it may use (its affinity) is sampled. Between
    polls it waits on `cancel`: once set, the process group is killed and reaped and `TrialCancelled`
    raised."""
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
            if cancel.wait(POLL_S):
                logger.info("%s: cancelled at %.1f s: its process group is killed", cmd[0], now)
                raise TrialCancelled(f"cancelled while {Path(cmd[-1]).name} ran: its process group is killed")
    except BaseException:  # an interrupted controller takes the process group down before unwinding
        _killpg(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_CONFIRM_S)  # reaped: no zombie is left behind
        reader.join()
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
