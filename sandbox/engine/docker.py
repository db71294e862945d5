"""The Docker engine: one trial as two hardened containers, with the controller owning the clock.

The trial's steps are the template's (sandbox/engine/trial.py); this module is the mechanism, and
docker_config.py the settings of every volume and container. One trial on the engine, in order:

    volume  out     tmpfs, size=output_limit_mb, nr_inodes capped, uid 65532, mode 0700
    volume  report  tmpfs, size=report_limit_mb
    holder  `sleep infinity`; mounts both volumes read-only and keeps them mounted
    TRAIN   candidate train.py (ro), data train/ + tokenizer/ (ro), out volume rw at /out
    EVAL    `python -m sandbox.incontainer.evaluate`; out volume ro at /artifact, data val/ + tokenizer/ (ro),
            report volume rw at /report. Created before TRAIN and started right after it (pre-warm):
            it imports torch and warms up while TRAIN runs, then waits for a go file in its own /tmp,
            which the controller creates (exec) only once TRAIN has exited; only then does it read
            the validation data and the artifact.
    then every container and volume is removed, whatever happened.

Why a holder (docs/ARCHITECTURE.md, "Departures"): the output cap is a tmpfs `size=`, enforced by
the kernel on every write, and such a volume lives only while a container uses it.

Deliberate properties:
- The controller keeps the clock: it polls the container state and sends SIGTERM at the budget and
  SIGKILL after the grace. docker-py's `wait(timeout)` is only an HTTP timeout and a followed log
  stream can block after exit, so neither is used. Logs are fetched once, after exit, and capped.
  Between polls it waits on the cancel event: a cancelled trial raises at once and its cleanup
  removes the containers with force.
- Memory is measured by the controller (engine stats sampled in a thread), never taken from the
  candidate's printout: the cgroup's peak, page cache and the output tmpfs included. So is the
  compute TRAIN got (sandbox/compute.py), from the schedstat of the tasks in TRAIN's cgroup.
- Infrastructure steps are retried (sandbox.retry); the candidate's run never is.
- The pre-warmed evaluator shares nothing writable with TRAIN: it sees the output channel read-only
  and reads neither it nor the validation data before the go, which comes after TRAIN's exit; its
  report channel is not mounted in TRAIN. Its clock (`eval_timeout_s`, `eval_wall_s`) starts at the
  go, and it touches no GPU before the go. When TRAIN ends without an artifact it is removed unused.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.volumes import Volume

from sandbox import constants as C
from sandbox.compute import ComputeMeter, ComputeReport, TaskGroup, allotment, source_for_pid, unmeasured
from sandbox.engine import docker_config as cfg
from sandbox.engine import reaper, trialdir
from sandbox.engine.base import EvalResult, StagedTrial, TrainResult
from sandbox.engine.docker_observe import MemoryWatcher, fetch_report, inspect_output
from sandbox.engine.gpu import parse_cpuset
from sandbox.engine.limits import MiB
from sandbox.engine.trial import run_trial
from sandbox.retry import engine_errors, infra_retry
from sandbox.verdict import EvalOutcome, SandboxError, TrainOutcome, TrialCancelled, TrialSpec, Verdict

logger = logging.getLogger(__name__)

POLL_MIN_S = 0.05  # state polling starts fast (short trials, prompt exit detection) ...
POLL_MAX_S = 0.25  # ... and slows down for long ones
KILL_CONFIRM_S = 30.0  # a SIGKILLed container still running after this is an engine failure


class DockerSandbox:
    """Runs trials on a Docker engine; one instance per controller process, reusable across trials.

    The `Sandbox` (sandbox/engine/backend.py) and the `Engine` (sandbox/engine/base.py) of Docker.
    """

    name = "docker"

    def __init__(
        self,
        *,
        client: docker.DockerClient | None = None,
        image: str = C.TRAINER_IMAGE,
        data_dir: Path | None = None,
        reap_orphans: bool = True,
        prewarm_eval: bool = True,
    ) -> None:
        self.client = client if client is not None else cfg.connect()
        self.prewarm_eval = prewarm_eval  # start EVAL with TRAIN (see the module docstring)
        self.image_id = cfg.resolve_image(self.client, image)
        self.data_dir = data_dir
        if reap_orphans:
            reaper.reap(self.client)

    @property
    def images(self) -> dict[str, str]:
        return {"trainer": self.image_id}

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        return run_trial(self, spec, cancel)

    def open(self, staged: StagedTrial) -> DockerTrial:
        return DockerTrial(
            self.client,
            self.image_id,
            staged.spec,
            staged.trial_dir,
            staged.data_dir,
            staged.candidate,
            prewarm_eval=self.prewarm_eval,
        )


@dataclass
class _Exit:
    exit_code: int | None  # None when the controller killed it
    oom_killed: bool
    sigterm_sent: bool
    sigkilled: bool
    wall_s: float
    # signal -> (seconds after the start request, epoch time), as the controller sent it
    signals: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class DockerTrial:
    """One trial on the engine (an `EngineTrial`): what it created, for cleanup, and what it observed."""

    client: docker.DockerClient
    image_id: str
    spec: TrialSpec
    trial_dir: Path
    data_dir: Path
    candidate: Path
    nonce: str = field(default_factory=lambda: secrets.token_hex(3))
    containers: list[Container] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    host_root: tuple[int, int] | None = None  # remapped_root(client), read once when a volume is made
    prewarm_eval: bool = True
    compute: ComputeReport = field(default_factory=lambda: unmeasured("TRAIN never started"))
    # Made by `train` for `evaluate`: the two channels, the holder and (pre-warmed) the evaluator.
    _out: Volume | None = field(default=None, init=False)
    _report: Volume | None = field(default=None, init=False)
    _holder: Container | None = field(default=None, init=False)
    _evaluator: Container | None = field(default=None, init=False)

    # ------------------------------------------------------------------ the steps

    def train(self, cancel: threading.Event) -> TrainResult:
        """Set up the channels, the holder, TRAIN (and the pre-warmed EVAL); run TRAIN on the clock."""
        limits = self.spec.limits
        t0 = time.monotonic()
        with self._step("volumes"):
            out = self._out = self.volume("out", limits.output_limit_mb, cfg.OUTPUT_MAX_INODES)
            report = self._report = self.volume("report", limits.report_limit_mb, cfg.REPORT_MAX_INODES)
        with self._step("holder"):
            holder = self._holder = self._create("holder", cfg.holder_config(limits, out.name, report.name))
            infra_retry(holder.start)()
        with self._step("train_create"):
            train = self._create("train", self.train_config(out))
        evaluator: Container | None = None
        if self.prewarm_eval:
            with self._step("eval_create"):
                evaluator = self._evaluator = self._create("eval", self._eval_config(out, report))
        self.timings["setup_s"] = time.monotonic() - t0

        with engine_errors("running TRAIN"):
            watcher = MemoryWatcher(train)
            meter: ComputeMeter | None = None

            def on_train_start() -> None:
                nonlocal meter
                watcher.start()
                meter = self._compute_meter(train)
                if evaluator is not None:  # inside TRAIN's clock: its start-up overlaps the candidate's
                    t = time.monotonic()
                    infra_retry(evaluator.start)()
                    self.timings["eval_start_s"] = time.monotonic() - t
                    if meter is not None:  # the trial's own work on its allotment, never "denied"
                        self._meter_prewarm(meter, evaluator)

            try:
                ran = self._run(
                    train,
                    cancel,
                    budget_s=limits.time_budget_s,
                    grace_s=limits.kill_grace_s,
                    on_start=on_train_start,
                )
            finally:
                watcher.stop()
                self.compute = meter.stop() if meter is not None else self.compute
        peak_memory_bytes = watcher.peak_bytes
        if ran.oom_killed:  # the kernel stopped it at the limit; the last sample came before that
            peak_memory_bytes = limits.mem_limit_mb * MiB
        self.timings["train_wall_s"] = ran.wall_s
        with self._step("train_logs"):
            log = self._keep_logs(train, "train", C.TRAIN_LOG_FILE, C.TRAIN_STATE_FILE)
        with self._step("output_probe"):
            channel = inspect_output(holder, limits)
        logger.info("TRAIN output channel: %s", channel)
        outcome = TrainOutcome(
            exit_code=ran.exit_code,
            oom_killed=ran.oom_killed,
            sigterm_sent=ran.sigterm_sent,
            sigkilled=ran.sigkilled,
            output_full=int(channel["free_bytes"]) < int(channel["block"])
            or int(channel["free_inodes"]) == 0,
            artifact_present=bool(channel["artifact_regular"]),
            wall_s=ran.wall_s,
        )
        return TrainResult(
            outcome,
            log,
            ran.signals,
            name=self.container_name("train"),
            peak_memory_bytes=peak_memory_bytes,
            compute=self.compute,
        )

    def evaluate(self, cancel: threading.Event) -> EvalResult:
        """Release the pre-warmed evaluator (or create and start one); run it on its clock; fetch its report."""
        if self._out is None or self._report is None or self._holder is None:
            raise SandboxError("evaluate called before train")
        limits = self.spec.limits
        evaluator = self._evaluator
        if evaluator is None:
            with self._step("eval_create"):
                evaluator = self._evaluator = self._create("eval", self._eval_config(self._out, self._report))
            with engine_errors("running EVAL"):
                ev = self._run(evaluator, cancel, budget_s=limits.eval_timeout_s, grace_s=None)
        else:
            with self._step("eval_go"):
                go_at = self._release(evaluator)
            with engine_errors("running EVAL"):
                ev = self._run(
                    evaluator, cancel, budget_s=limits.eval_timeout_s, grace_s=None, started_at=go_at
                )
        self.timings["eval_wall_s"] = ev.wall_s
        with self._step("eval_logs"):
            self._keep_logs(evaluator, "eval", C.EVAL_LOG_FILE, C.EVAL_STATE_FILE)
        with self._step("report_fetch"):
            report, report_error = fetch_report(self._holder, limits, self.trial_dir, self.logs)
        outcome = EvalOutcome(
            exit_code=ev.exit_code,
            oom_killed=ev.oom_killed,
            timed_out=ev.sigkilled,
            report=report,
            report_error=report_error,
            wall_s=ev.wall_s,
        )
        return EvalResult(outcome, ev.signals, name=self.container_name("eval"))

    # ------------------------------------------------------------------ the clock

    def _compute_meter(self, train: Container) -> ComputeMeter | None:
        """A meter on TRAIN's cgroup, found from the pid the engine reports (None: not measurable here).

        The engine's `State.Pid` is a host pid; the cgroup it is in lists every task of the container.
        A controller that cannot see that pid (another pid namespace) records why, and the trial is
        judged as unmeasured rather than guessed at.
        """
        infra_retry(train.reload)()
        pid = int((train.attrs.get("State") or {}).get("Pid") or 0)
        source = source_for_pid(pid, container_id=train.id)
        if isinstance(source, str):
            logger.warning("TRAIN's compute cannot be measured: %s", source)
            self.compute = unmeasured(source)
            return None
        limits = self.spec.limits
        cpuset = set(parse_cpuset(limits.cpuset_cpus)) if limits.cpuset_cpus else None
        meter = ComputeMeter(TaskGroup(source), allotment(cpuset, limits.cpus))
        meter.start()
        return meter

    @staticmethod
    def _meter_prewarm(meter: ComputeMeter, evaluator: Container) -> None:
        """Add the pre-warming EVAL's tasks to TRAIN's meter (same cpuset: the trial's own CPU use)."""
        infra_retry(evaluator.reload)()
        pid = int((evaluator.attrs.get("State") or {}).get("Pid") or 0)
        source = source_for_pid(pid, container_id=evaluator.id)
        if isinstance(source, str):
            logger.warning("the pre-warming EVAL's compute cannot be measured: %s", source)
        elif isinstance(meter.source, TaskGroup):
            meter.source.add(source)

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """One infrastructure step: timed into `timings[name_s]`, engine errors made typed."""
        t0 = time.monotonic()
        with engine_errors(name.replace("_", " ")):
            yield
        self.timings[f"{name}_s"] = time.monotonic() - t0

    def _run(
        self,
        container: Container,
        cancel: threading.Event,
        *,
        budget_s: float,
        grace_s: float | None,
        on_start: Callable[[], None] | None = None,
        started_at: float | None = None,
    ) -> _Exit:
        """Start the container and keep the clock: SIGTERM at the budget, SIGKILL after the grace.

        With `grace_s=None` the container gets SIGKILL at the budget directly (the evaluator). With
        `started_at`, the container is already running and its clock started then (the pre-warmed
        evaluator: at its go). Between polls it waits on `cancel`; once set, it raises `TrialCancelled`
        and leaves the container to the cleanup, which removes it with force.
        """
        role = container.labels.get(C.LABEL_ROLE, "?")
        if started_at is None:
            # The clock starts before the start request: the container's start-up counts against its budget.
            start = time.monotonic()
            infra_retry(container.start)()
            self.timings[f"{role}_start_s"] = time.monotonic() - start
        else:
            start = started_at
        if on_start is not None:
            on_start()
        kill_at = budget_s if grace_s is None else budget_s + grace_s
        sigterm_sent = sigkilled = False
        signals: dict[str, tuple[float, float]] = {}
        while True:
            infra_retry(container.reload)()
            if container.status not in cfg.RUNNING:
                break
            now = time.monotonic() - start
            if grace_s is not None and not sigterm_sent and now >= budget_s:
                sigterm_sent = self._signal(container, "SIGTERM")
                if sigterm_sent:
                    signals["SIGTERM"] = (now, time.time())
                    logger.info("%s: time budget %.1f s reached: SIGTERM", role, budget_s)
            if not sigkilled and now >= kill_at:
                sigkilled = self._signal(container, "SIGKILL")
                if sigkilled:
                    signals["SIGKILL"] = (now, time.time())
                    logger.info("%s: %.1f s reached: SIGKILL", role, kill_at)
            if sigkilled and now >= kill_at + KILL_CONFIRM_S:
                raise SandboxError(f"{container.name} still runs {KILL_CONFIRM_S:.0f} s after SIGKILL")
            next_deadline = budget_s if grace_s is not None and not sigterm_sent else kill_at
            pause = min(POLL_MIN_S + now / 40, POLL_MAX_S)
            if next_deadline > now:
                pause = min(pause, next_deadline - now)
            if cancel.wait(max(pause, 0.005)):
                logger.info("%s: cancelled at %.1f s", role, time.monotonic() - start)
                raise TrialCancelled(f"cancelled while {role} ran: its containers are removed")
        wall = time.monotonic() - start
        state = container.attrs["State"]
        exit_code = None if sigkilled else int(state["ExitCode"])
        logger.info(
            "%s exited: code %s, OOMKilled %s, %.2f s", role, state["ExitCode"], state["OOMKilled"], wall
        )
        return _Exit(exit_code, bool(state["OOMKilled"]), sigterm_sent, sigkilled, wall, signals)

    @staticmethod
    def _signal(container: Container, sig: str) -> bool:
        """Send a signal; False when the container had already exited (the engine answers 409)."""
        try:
            infra_retry(container.kill)(signal=sig)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return False
            raise
        return True

    def _release(self, evaluator: Container) -> float:
        """Tell the pre-warmed evaluator that TRAIN is over (its go file); return when its clock starts.

        The file is created by exec as the sandbox user in the evaluator's own /tmp, which nothing else
        can write. An evaluator that already exited (it failed while preparing) gets no go; `_run` then
        reports its exit as it is.
        """
        go_at = time.monotonic()
        uid = f"{self.spec.limits.uid}:{self.spec.limits.gid}"
        try:
            result = infra_retry(evaluator.exec_run)(cfg.GO_COMMAND, user=uid)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running any more
                logger.warning("the evaluator exited before its go")
                return go_at
            raise
        if result.exit_code != 0:
            raise SandboxError(
                f"could not release the evaluator (exit {result.exit_code}): {result.output!r}"
            )
        return go_at

    # ------------------------------------------------------------------ engine objects

    def container_name(self, role: str) -> str:
        return f"ar-{self.spec.trial_id}-{self.nonce}-{role}"

    def volume(self, role: str, size_mb: int, inodes: int) -> Volume:
        if self.host_root is None:
            self.host_root = cfg.remapped_root(self.client)
        opts = cfg.tmpfs_volume_options(self.spec.limits, self.host_root, size_mb, inodes)
        volume: Volume = infra_retry(self.client.volumes.create)(
            name=self.container_name(role),
            driver="local",
            driver_opts={"type": "tmpfs", "device": "tmpfs", "o": opts},
            labels=reaper.sandbox_labels(self.spec.trial_id, role),
        )
        self.volumes.append(volume)
        return volume

    def _create(self, role: str, config: dict[str, Any]) -> Container:
        container: Container = infra_retry(self.client.containers.create)(
            image=self.image_id,
            name=self.container_name(role),
            labels=reaper.sandbox_labels(self.spec.trial_id, role),
            **config,
        )
        self.containers.append(container)
        return container

    def train_config(self, out: Volume) -> dict[str, Any]:
        return cfg.train_config(self.spec, self.candidate, self.data_dir, out.name)

    def _eval_config(self, out: Volume, report: Volume) -> dict[str, Any]:
        return cfg.eval_config(self.spec, self.data_dir, out.name, report.name, prewarm=self.prewarm_eval)

    # ------------------------------------------------------------------ what the trial left

    def _keep_logs(self, container: Container, name: str, log_file: str, state_file: str) -> bytes:
        """Save the container's capped log and the engine's inspect output; return the log."""
        limit = self.spec.limits.log_limit_bytes
        raw: bytes = infra_retry(container.logs)(stdout=True, stderr=True, stream=False)
        log = trialdir.keep_tail(raw, limit)
        log_path = self.trial_dir / log_file
        log_path.write_bytes(log)
        state_path = self.trial_dir / state_file
        state_path.write_text(json.dumps(container.attrs, indent=2, default=str) + "\n")
        self.logs[name] = log_path
        self.logs[f"{name}_container"] = state_path
        return log

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Remove every container, then every volume, in parallel; log each failure and never raise.

        Removing with force sends SIGKILL to whatever still runs: the candidate already had its SIGTERM
        and grace from the clock, and the holder and evaluator are ours, so a gentle stop would only
        cost time. If the removal fails, an explicit kill and a second removal follow; whatever still
        fails is left to the reaper (it carries our labels). Volumes go last: one in use cannot go.
        """
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="cleanup") as pool:
            list(pool.map(_dispose_container, self.containers))
            list(pool.map(_dispose_volume, self.volumes))
        self.containers.clear()
        self.volumes.clear()


def _dispose_container(container: Container) -> None:
    remove = partial(container.remove, force=True)
    if not _attempt(f"remove {container.name}", remove):
        _attempt(f"kill {container.name}", container.kill)
        _attempt(f"remove {container.name} (second try)", remove)


def _dispose_volume(volume: Volume) -> None:
    _attempt(f"remove volume {volume.name}", partial(volume.remove, force=True))


def _attempt(step: str, action: Callable[[], object]) -> bool:
    """Run one cleanup step with the retry policy; True when it succeeded or there was nothing to do."""
    try:
        infra_retry(action)()
    except docker.errors.NotFound:
        return True
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        logger.warning("cleanup: could not %s: %s", step, exc)
        return False
    return True
