"""DockerSandbox: one trial as two hardened containers, with the controller owning the clock.

One trial, in order:

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

Why a holder: the output cap must be enforced by the kernel on every write (a tmpfs `size=`), not
checked afterwards. A container's own tmpfs dies with the container, and a docker local volume of
type tmpfs is mounted when its first user starts and unmounted, contents lost, when its last user
stops. The holder is that last user: trusted, idle, with a 64 MiB memory limit (tmpfs pages are
charged to the writer, TRAIN, not to the holder). It is also where the controller looks into the
channel (`statvfs`, is model.pt2 a regular file) and fetches the report, so the controller never
needs access to the engine's files on the host and can itself run in a container.

Deliberate properties:
- The image is resolved to its ID once per sandbox and every container is created from that ID, so a
  rebuilt `:latest` cannot change a running experiment; the ID goes into every verdict.
- TRAIN's environment is built from scratch (profile, paths, seed, HOME, TMPDIR, Python flags): never
  the controller's environment, so no API key or token can leak into the candidate's world.
- The controller keeps the clock: it polls the container state and sends SIGTERM at the budget and
  SIGKILL after the grace. docker-py's `wait(timeout)` is only an HTTP timeout and a followed log
  stream can block after exit, so neither is used. Logs are fetched once, after exit, and capped.
- Memory is measured by the controller (engine stats sampled in a thread), never taken from the
  candidate's own printout. It is the cgroup's peak: page cache and the output tmpfs included.
- So is the compute TRAIN got (sandbox/compute.py): the schedstat of the tasks in TRAIN's cgroup,
  found from the host pid the engine reports. A TRAIN below `spec.min_compute_share` is `starved`
  whatever else happened to it, and its artifact is not evaluated.
- GPUs are passed only as explicit device ids from the spec's lease, never "all".
- Infrastructure steps are retried (sandbox.retry); the candidate's run never is.
- The pre-warmed evaluator shares nothing writable with TRAIN: it sees the output channel read-only
  and reads neither it nor the validation data before the go, which comes after TRAIN's exit (the
  moment the evaluator used to be started); its report channel is not mounted in TRAIN. It is a fresh
  container and process per trial, its clock (`eval_timeout_s`, `eval_wall_s`) starts at the go, and
  it touches no GPU before the go. When TRAIN ends without an artifact it is removed unused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import secrets
import tarfile
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
from docker.types import DeviceRequest, Mount

from sandbox import audit, reaper, trialdir
from sandbox import constants as C
from sandbox.compute import ComputeMeter, ComputeReport, allotment, source_for_pid, unmeasured
from sandbox.constants import Status
from sandbox.gpu import parse_cpuset
from sandbox.incontainer.fileio import atomic_write
from sandbox.limits import MiB
from sandbox.report import EvalReport, parse_report
from sandbox.retry import engine_errors, infra_retry
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

API_TIMEOUT_S = 60  # every HTTP call to the engine, cleanup included
POLL_MIN_S = 0.05  # state polling starts fast (short trials, prompt exit detection) ...
POLL_MAX_S = 0.25  # ... and slows down for long ones
STATS_INTERVAL_S = 0.5
KILL_CONFIRM_S = 30.0  # a SIGKILLed container still running after this is an engine failure
OUTPUT_MAX_INODES = 4096  # files in the output channel; inodes cost memory the size cap does not see
REPORT_MAX_INODES = 64
HOLDER_MEM_MB = 64
HOLDER_PIDS = 16
REPORT_PATH = f"{C.CONTAINER_REPORT_DIR}/{C.REPORT_FILE}"
EVAL_GO_FILE = "/tmp/autoresearch-eval-go"  # in the evaluator's private /tmp: created by exec after TRAIN
_GO = f"open({EVAL_GO_FILE!r}, 'w').close()"
# The pre-warmed evaluator's CPU weight (cgroup cpu.shares; containers default to 1024): a quarter of
# TRAIN's. Its start-up (imports, warm-up: about 2 s of one core) overlaps TRAIN on the same CPUs; with
# this weight it runs in TRAIN's idle moments and otherwise gets a fifth of a contended core, instead of
# half. After TRAIN it is alone and runs at full speed: a weight only matters under contention.
EVAL_CPU_SHARES = 256
RUNNING = frozenset({"created", "running", "restarting", "paused"})

# Run in the holder (trusted code, the holder's read-only view of the output channel).
_OUTPUT_PROBE = f"""
import json, os, stat
s = os.statvfs({C.CONTAINER_OUT!r})
try:
    a = os.lstat({C.CONTAINER_OUT + "/" + C.ARTIFACT_FILE!r})
except FileNotFoundError:
    a = None
print(json.dumps({{"free_bytes": s.f_bavail * s.f_frsize, "block": s.f_frsize, "free_inodes": s.f_favail,
    "artifact_regular": a is not None and stat.S_ISREG(a.st_mode), "artifact_bytes": a and a.st_size}}))
"""


def connect(timeout_s: int = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the engine in the environment (DOCKER_HOST or the default socket), checked with a ping."""
    with engine_errors("connecting to the Docker engine"):
        client = docker.from_env(timeout=timeout_s)
        infra_retry(client.ping)()
    return client


def remapped_root(client: docker.DockerClient) -> tuple[int, int]:
    """The host uid and gid that the engine maps container root to: (0, 0) without userns-remap.

    A remapping engine says so in SecurityOptions ("name=userns") and keeps its data in
    <data-root>/<uid>.<gid>, named after exactly these ids. Container uid N is then host uid uid+N (one
    subordinate range, as `--userns-remap=default` creates; preflight's writes to /out prove it).
    """
    with engine_errors("reading the engine's configuration"):
        info: dict[str, Any] = infra_retry(client.info)()
    if not any("name=userns" in opt for opt in info.get("SecurityOptions") or []):
        return 0, 0
    uid, _, gid = Path(str(info.get("DockerRootDir") or "")).name.partition(".")
    if not (uid.isdigit() and gid.isdigit()):
        raise SandboxError(f"userns-remap engine with an unexpected data-root {info.get('DockerRootDir')!r}")
    return int(uid), int(gid)


def resolve_image(client: docker.DockerClient, ref: str = C.TRAINER_IMAGE) -> str:
    """The image's ID ("sha256:..."), which pins its content; raises ImageMissing when it is not built."""
    with engine_errors(f"resolving image {ref}"):
        image_id: str = infra_retry(client.images.get)(ref).id
    return image_id


class DockerSandbox:
    """Runs trials on a Docker engine; one instance per controller process, reusable across trials."""

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
        self.client = client if client is not None else connect()
        self.prewarm_eval = prewarm_eval  # start EVAL with TRAIN (see the module docstring)
        self.image_id = resolve_image(self.client, image)
        self.data_dir = data_dir
        if reap_orphans:
            reaper.reap(self.client)

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        started = time.monotonic()
        trial_dir = spec.trial_dir.resolve()
        trial_dir.mkdir(parents=True, exist_ok=True)
        with trialdir.trial_log(trial_dir / C.SANDBOX_LOG_FILE):
            data_dir = trialdir.resolve_data_dir(self.data_dir, spec.profile)
            candidate = trialdir.stage_candidate(spec.candidate, trial_dir)
            trail = audit.AuditTrail(trial_dir, spec.trial_id)
            trail.start(spec, backend=self.name, images={"trainer": self.image_id})
            trial = DockerTrial(
                self.client,
                self.image_id,
                spec,
                trial_dir,
                data_dir,
                candidate,
                trail=trail,
                prewarm_eval=self.prewarm_eval,
            )
            logger.info(
                "trial %s: image %s, data %s, limits %s", spec.trial_id, self.image_id, data_dir, spec.limits
            )
            try:
                status, val_bpb, reason, report = trial.execute()
            except SandboxError as exc:
                logger.error("trial %s: sandbox failure: %s", spec.trial_id, exc)
                trail.infrastructure_error(exc)
                raise
            finally:
                teardown_start = time.monotonic()
                trial.cleanup()
                trial.timings["teardown_s"] = time.monotonic() - teardown_start
            trial.timings["total_s"] = time.monotonic() - started
            verdict = trialdir.finish(
                spec,
                backend=self.name,
                status=status,
                val_bpb=val_bpb,
                reason=reason,
                train_log=trial.train_log,
                timings=trial.timings,
                peak_memory_bytes=trial.peak_memory_bytes,
                images={"trainer": self.image_id},
                logs=trial.logs,
                report=report,
                compute=trial.compute,
            )
            trail.verdict(verdict)
            return verdict


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
    """The state of one trial on the engine: what it created (for cleanup) and what it observed."""

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
    train_log: bytes = b""
    peak_memory_bytes: int | None = None
    host_root: tuple[int, int] | None = None  # remapped_root(client), read once when a volume is made
    trail: audit.AuditTrail | None = None  # audit.jsonl: where the trial's denials and exits are recorded
    prewarm_eval: bool = True
    compute: ComputeReport = field(default_factory=lambda: unmeasured("TRAIN never started"))

    # ------------------------------------------------------------------ the trial

    def execute(self) -> tuple[Status, float | None, str, EvalReport | None]:
        limits = self.spec.limits
        t0 = time.monotonic()
        with self._step("volumes"):
            out = self.volume("out", limits.output_limit_mb, OUTPUT_MAX_INODES)
            report_vol = self.volume("report", limits.report_limit_mb, REPORT_MAX_INODES)
        with self._step("holder"):
            holder = self._holder(out, report_vol)
        with self._step("train_create"):
            train = self._create("train", self.train_config(out))
        evaluator: Container | None = None
        if self.prewarm_eval:
            with self._step("eval_create"):
                evaluator = self._create("eval", self._eval_config(out, report_vol))
        self.timings["setup_s"] = time.monotonic() - t0

        with engine_errors("running TRAIN"):
            watcher = _MemoryWatcher(train)
            meter: ComputeMeter | None = None

            def on_train_start() -> None:
                nonlocal meter
                watcher.start()
                meter = self._compute_meter(train)
                if evaluator is not None:  # inside TRAIN's clock: its start-up overlaps the candidate's
                    t = time.monotonic()
                    infra_retry(evaluator.start)()
                    self.timings["eval_start_s"] = time.monotonic() - t

            try:
                ran = self._run(
                    train, budget_s=limits.time_budget_s, grace_s=limits.kill_grace_s, on_start=on_train_start
                )
            finally:
                watcher.stop()
                self.compute = meter.stop() if meter is not None else self.compute
        logger.info("TRAIN %s", self.compute.summary())
        self.peak_memory_bytes = watcher.peak_bytes
        if ran.oom_killed:  # the kernel stopped it at the limit; the last sample came before that
            self.peak_memory_bytes = limits.mem_limit_mb * MiB
        self.timings["train_wall_s"] = ran.wall_s
        with self._step("train_logs"):
            self.train_log = self._keep_logs(train, "train", C.TRAIN_LOG_FILE, C.TRAIN_STATE_FILE)
        with self._step("output_probe"):
            channel = self._inspect_output(holder)
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
        logger.info("TRAIN outcome: %s; output channel: %s", outcome, channel)
        if self.trail is not None:
            self.trail.train(outcome, limits, signals=ran.signals, name=self.container_name("train"))
        early = classify_starved(self.compute, self.spec.min_compute_share) or classify_train(outcome)
        if early is not None:
            return early[0], None, early[1], None

        if evaluator is None:
            with self._step("eval_create"):
                evaluator = self._create("eval", self._eval_config(out, report_vol))
            with engine_errors("running EVAL"):
                ev = self._run(evaluator, budget_s=limits.eval_timeout_s, grace_s=None)
        else:
            with self._step("eval_go"):
                go_at = self._release(evaluator)
            with engine_errors("running EVAL"):
                ev = self._run(evaluator, budget_s=limits.eval_timeout_s, grace_s=None, started_at=go_at)
        self.timings["eval_wall_s"] = ev.wall_s
        with self._step("eval_logs"):
            self._keep_logs(evaluator, "eval", C.EVAL_LOG_FILE, C.EVAL_STATE_FILE)
        with self._step("report_fetch"):
            report, report_error = self._fetch_report(holder)
        eval_outcome = EvalOutcome(
            exit_code=ev.exit_code,
            oom_killed=ev.oom_killed,
            timed_out=ev.sigkilled,
            report=report,
            report_error=report_error,
            wall_s=ev.wall_s,
        )
        if self.trail is not None:
            self.trail.eval(eval_outcome, limits, signals=ev.signals, name=self.container_name("eval"))
        status, val_bpb, reason = classify_eval(eval_outcome)
        return status, val_bpb, reason, report

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
        meter = ComputeMeter(source, allotment(cpuset, limits.cpus))
        meter.start()
        return meter

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
        *,
        budget_s: float,
        grace_s: float | None,
        on_start: Callable[[], None] | None = None,
        started_at: float | None = None,
    ) -> _Exit:
        """Start the container and keep the clock: SIGTERM at the budget, SIGKILL after the grace.

        With `grace_s=None` the container gets SIGKILL at the budget directly (the evaluator). With
        `started_at`, the container is already running and its clock started then (the pre-warmed
        evaluator: at its go).
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
            if container.status not in RUNNING:
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
            time.sleep(max(pause, 0.005))
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
            result = infra_retry(evaluator.exec_run)(["python", "-I", "-S", "-c", _GO], user=uid)
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
        # The engine mounts the tmpfs on the host, outside any user namespace: under userns-remap its
        # owner must be the host ids the container's uid:gid map to, or TRAIN cannot write its output.
        if self.host_root is None:
            self.host_root = remapped_root(self.client)
        uid, gid = self.spec.limits.uid + self.host_root[0], self.spec.limits.gid + self.host_root[1]
        opts = f"size={size_mb}m,nr_inodes={inodes},uid={uid},gid={gid},mode=0700"
        volume: Volume = infra_retry(self.client.volumes.create)(
            name=self.container_name(role),
            driver="local",
            driver_opts={"type": "tmpfs", "device": "tmpfs", "o": f"{opts},noexec,nosuid,nodev"},
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

    def _holder(self, out: Volume, report: Volume) -> Container:
        config = self.spec.limits.common_docker_kwargs(mem_limit_mb=HOLDER_MEM_MB)
        config.pop("runtime", None)  # trusted and idle: the default runtime starts fastest
        config |= {
            "command": ["sleep", "infinity"],
            "pids_limit": HOLDER_PIDS,
            "working_dir": C.CONTAINER_APP,
            "mounts": [
                Mount(C.CONTAINER_OUT, out.name, "volume", read_only=True, no_copy=True),
                Mount(C.CONTAINER_REPORT_DIR, report.name, "volume", read_only=True, no_copy=True),
            ],
        }
        holder = self._create("holder", config)
        infra_retry(holder.start)()
        return holder

    def _env(self) -> dict[str, str]:
        limits = self.spec.limits
        env = {
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PYTHONPATH": C.CONTAINER_APP,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            C.ENV_PROFILE: self.spec.profile,
            C.ENV_DATA: C.CONTAINER_DATA,
            C.ENV_SEED: str(self.spec.seed),
        }
        if limits.cpus is not None:  # a CPU quota does not change os.cpu_count(): size thread pools to it
            env["OMP_NUM_THREADS"] = str(max(1, math.floor(limits.cpus)))
        return env

    def _gpus(self) -> list[DeviceRequest]:
        if not self.spec.gpu_ids:
            return []
        return [DeviceRequest(device_ids=list(self.spec.gpu_ids), capabilities=[["gpu"]])]

    def _data(self, name: str) -> Mount:
        return Mount(f"{C.CONTAINER_DATA}/{name}", str(self.data_dir / name), "bind", read_only=True)

    def train_config(self, out: Volume) -> dict[str, Any]:
        limits = self.spec.limits
        config = limits.common_docker_kwargs(mem_limit_mb=limits.mem_limit_mb)
        config |= {
            "command": [*C.JAIL, "python", C.CONTAINER_CANDIDATE],
            "environment": self._env() | {C.ENV_OUT: C.CONTAINER_OUT},
            "mounts": [
                Mount(C.CONTAINER_CANDIDATE, str(self.candidate), "bind", read_only=True),
                self._data(C.TRAIN_DIRNAME),
                self._data(C.TOKENIZER_DIRNAME),
                Mount(C.CONTAINER_OUT, out.name, "volume", read_only=False, no_copy=True),
            ],
            "device_requests": self._gpus(),
        }
        return config

    def _eval_config(self, out: Volume, report: Volume) -> dict[str, Any]:
        limits = self.spec.limits
        config = limits.common_docker_kwargs(mem_limit_mb=limits.eval_mem_limit_mb)
        mounts = [
            Mount(C.CONTAINER_ARTIFACT, out.name, "volume", read_only=True, no_copy=True),
            Mount(C.CONTAINER_REPORT_DIR, report.name, "volume", read_only=False, no_copy=True),
            self._data(C.VAL_DIRNAME),
            self._data(C.TOKENIZER_DIRNAME),
        ]
        if (self.data_dir / C.DATA_MANIFEST_FILE).is_file():
            mounts.append(self._data(C.DATA_MANIFEST_FILE))
        config |= {
            "command": [
                *C.JAIL,
                "python",
                "-m",
                C.EVALUATOR_MODULE,
                "--profile",
                self.spec.profile,
                "--artifact",
                C.CONTAINER_ARTIFACT,
                "--report",
                REPORT_PATH,
                "--data",
                C.CONTAINER_DATA,
                "--device",
                "cuda" if self.spec.gpu_ids else "cpu",
                *(["--wait-for", EVAL_GO_FILE] if self.prewarm_eval else []),
            ],
            "environment": self._env(),
            "working_dir": C.CONTAINER_APP,
            "mounts": mounts,
            **({"cpu_shares": EVAL_CPU_SHARES} if self.prewarm_eval else {}),
            "device_requests": self._gpus(),
        }
        return config

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

    def _inspect_output(self, holder: Container) -> dict[str, Any]:
        """How full the output channel is and whether model.pt2 is a regular file, seen from the holder."""
        uid = f"{self.spec.limits.uid}:{self.spec.limits.gid}"
        result = infra_retry(holder.exec_run)(["python", "-I", "-S", "-c", _OUTPUT_PROBE], user=uid)
        try:
            channel: dict[str, Any] = json.loads(result.output)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SandboxError(
                f"could not inspect the output channel (exit {result.exit_code}): {result.output!r}"
            ) from exc
        return channel

    def _fetch_report(self, holder: Container) -> tuple[EvalReport | None, str]:
        """The evaluator's report from the report channel, size-capped and parsed; or None and why not."""
        cap = self.spec.limits.report_limit_mb * MiB
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
        atomic_write(self.trial_dir / C.REPORT_FILE, raw, durable=False)
        self.logs["report"] = self.trial_dir / C.REPORT_FILE
        return parse_report(raw)

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


class _MemoryWatcher:
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
