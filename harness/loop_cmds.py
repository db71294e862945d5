"""The research loop's commands: `run`, `status`, `report`, `verify-ledger`, `logs`.

`run` resolves the configuration (flags over environment over autoresearch.toml over defaults),
prints a banner saying what it chose and why, and drives `ResearchLoop`. The default run folder
is `runs/<profile>-<agent>` (e.g. `runs/tiny-offline`), so running the same command again resumes
the same run. When a session ends it writes progress.png and report.md into the run folder.

Exit codes: 0 done; 1 the run stopped on an error (the message says what to do); 2 the
configuration is broken; 3 engine unreachable, 4 image missing, 5 data missing, 6 the evaluator failed (as `trial`);
8 ISOLATION BROKEN: the run canary, a known cheat, was not rejected (harness/canary.py); 9 a cost or
token cap was reached (the message names it; raise it and run the same command to continue); 10 the
local backend was asked for with an LLM agent without `--i-understand-local-runs-agent-code-unsandboxed`;
11 paused: the host starved `retries.starved_attempts` runs in a row (run the same command once it is
quieter); 130 interrupted (Ctrl-C or SIGTERM; run the same command to resume). `verify-ledger` exits 1
when history does not verify.

Deliberate: `--backend local` runs train.py as a host process with no isolation at all. With the
scripted agents (offline, replay) the code is this repository's or a folder the user chose; with an
LLM agent it is code nobody has read, so the run refuses to start unless the loudly named flag is
given on the command line. The acknowledgement is a flag only (no setting, no environment variable):
it cannot be left in a file and forgotten.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandbox.constants import ExitCode

logger = logging.getLogger(__name__)

LOCAL_ACK_FLAG = "--i-understand-local-runs-agent-code-unsandboxed"
SCRIPTED_AGENTS = frozenset({"offline", "replay"})  # agents whose train.py no model wrote during the run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the research loop (resumes when the run folder already exists)",
        description="Baseline, then propose / run / judge / record until --max-trials or Ctrl-C. "
        "Running the same command again resumes the run.",
    )
    run.add_argument("--profile", choices=("tiny", "gpu", "auto"), help="auto: gpu if a GPU is visible")
    run.add_argument(
        "--agent",
        choices=("claude", "offline", "replay", "auto"),
        help="auto: claude if ANTHROPIC_API_KEY is set",
    )
    run.add_argument("--replay-dir", type=Path, help="the replay agent's folder of train.py files")
    run.add_argument(
        "--max-trials", type=int, metavar="N", help="candidate trials in the run folder (default: forever)"
    )
    run.add_argument("--run-dir", type=Path, help="default: runs/<profile>-<agent>")
    run.add_argument("--config", type=Path, help="TOML settings (default: ./autoresearch.toml if present)")
    run.add_argument("--backend", choices=("docker", "local"), help="local isolates NOTHING: tests only")
    run.add_argument(
        LOCAL_ACK_FLAG,
        dest="local_unsandboxed_ack",
        action="store_true",
        help="required for --backend local with an LLM agent: its train.py then runs on this host, "
        "as you, with your files, network and credentials, and NOTHING isolates it",
    )
    run.add_argument("--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)")
    run.add_argument("--program", type=Path, help="the agent's instructions (default: ./program.md)")
    run.add_argument("--train-py", type=Path, help="the starting train.py (default: ./train.py)")
    run.add_argument(
        "--data-dir", type=Path, help="prepared data (default: prepare.py's folder for the profile)"
    )
    run.add_argument("--seed", type=int, help="base seed for every run's seed")
    run.add_argument(
        "--canary-interval",
        type=int,
        metavar="N",
        help="candidate trials between run canaries, a known cheat that must be rejected "
        "(default 10 on docker, off on local; 0: off, with a warning)",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="trials at once, each on its own GPU (gpu profile) or cpuset (default 1)",
    )
    run.add_argument(
        "--max-cost-usd",
        type=float,
        metavar="USD",
        help="stop (exit 9) once the agent has cost this much over the whole run; resume with a higher cap",
    )
    run.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="dispatch each trial to a verified node of this Ray cluster (`auto` or HOST:PORT; token "
        "auth from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH); --backend is what runs on the nodes",
    )
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="a run's key numbers and last trials")
    status.add_argument("dir", nargs="?", type=Path, help="run folder (default: the only one under runs/)")
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="write progress.png and report.md into a run folder")
    report.add_argument("dir", nargs="?", type=Path, help="run folder (default: the only one under runs/)")
    report.set_defaults(func=cmd_report)

    check = sub.add_parser("verify-ledger", help="re-hash a run's ledger; exit 1 naming the first bad row")
    check.add_argument("dir", type=Path, help="run folder (or its ledger.jsonl)")
    check.set_defaults(func=cmd_verify_ledger)

    logs = sub.add_parser(
        "logs",
        help="one trial's TRAIN and EVAL logs, limits, exit reasons, evaluator report and audit events",
    )
    logs.add_argument("trial", help="trial id, e.g. t0007")
    logs.add_argument("--run-dir", type=Path, help="run folder (default: the only one under runs/)")
    logs.set_defaults(func=cmd_logs)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- run


@contextlib.contextmanager
def _gpu_lease(
    profile: str, configured: tuple[str, ...], owner: str, workers: int = 1
) -> Iterator[tuple[str, ...]]:
    """The GPU ids for this session: the configured ones, or one leased device for the gpu profile.

    With several workers each leases its own (harness/loop/pool.py), so none is leased here."""
    if configured or profile != "gpu" or workers > 1:
        yield configured
        return
    from sandbox.engine.gpu import GpuLeases

    with GpuLeases().acquire(owner) as ids:
        yield ids


def cmd_run(args: argparse.Namespace) -> int:
    from harness.agents import make_agent
    from harness.agents.base import AgentFatal
    from harness.config import (
        ConfigError,
        RunConfig,
        agent_settings_for,
        default_run_dir,
        load_settings,
        resolve_agent,
        resolve_canary_interval,
        resolve_profile,
    )
    from harness.loop import CapReached, HostStarved, IsolationBroken, LoopError, ResearchLoop, read_program
    from harness.progress import make_progress
    from harness.records.chain import LedgerError
    from harness.records.lineage import LineageError, check_run_tag
    from harness.records.results import ResultsError
    from sandbox.verdict import EngineUnavailable, ImageMissing, SandboxError, exit_code_for

    overrides: dict[str, Any] = {
        "profile": args.profile,
        "agent": args.agent,
        "replay_dir": args.replay_dir,
        "max_trials": args.max_trials,
        "run_dir": args.run_dir,
        "backend": args.backend,
        "runtime": args.runtime,
        "program": args.program,
        "train_py": args.train_py,
        "data_dir": args.data_dir,
        "seed": args.seed,
        "workers": args.workers,
        "canary_interval": args.canary_interval,
        "max_cost_usd": args.max_cost_usd,
    }
    try:
        settings = load_settings(args.config, overrides)
        profile = resolve_profile(settings.profile)
        agent_choice = resolve_agent(settings.agent)
        run_dir = settings.run_dir or default_run_dir(profile.value, agent_choice.value)
        try:
            run_tag = check_run_tag(settings.run_tag or _recorded_run_tag(run_dir) or run_dir.resolve().name)
        except ValueError as exc:
            raise ConfigError(f"run_tag: {exc} (set run_tag in the configuration)") from None
        limits = settings.limits_for(profile.value)
        agent_settings = agent_settings_for(settings, agent_choice.value)
        canary_interval, canary_why = resolve_canary_interval(settings.canary_interval, settings.backend)
    except ConfigError as exc:
        _err(str(exc))
        return ExitCode.CONFIG
    unsandboxed_llm = settings.backend == "local" and agent_choice.value not in SCRIPTED_AGENTS
    if unsandboxed_llm and not args.local_unsandboxed_ack:
        _err(
            f"refusing to run the {agent_choice.value} agent's train.py with the local backend: it would run "
            "on this host as you, with your files, your network and your credentials, and NOTHING isolates "
            f"it. Use --backend docker, or, if you really mean it, add {LOCAL_ACK_FLAG}."
        )
        return ExitCode.LOCAL_NOT_ACKNOWLEDGED

    banner = [
        f"profile {profile}",
        f"agent {agent_choice}",
        f"backend {settings.backend}"
        + (
            ": LOCAL BACKEND, NO ISOLATION: train.py runs as you, on your files and network. Tests only."
            + (
                f" Acknowledged with {LOCAL_ACK_FLAG} for the {agent_choice.value} agent."
                if unsandboxed_llm
                else ""
            )
            if settings.backend == "local"
            else ": every candidate in hardened containers"
            + (f" (runtime {settings.runtime})" if settings.runtime else "")
        ),
        *(
            [f"workers {settings.workers}, each on its own {'GPU' if profile.value == 'gpu' else 'cpuset'}"]
            if settings.workers > 1
            else []
        ),
        (
            f"canary every {canary_interval} candidate trials and after the baseline: {canary_why}"
            if canary_interval
            else f"canary OFF: {canary_why}. WARNING: nothing checks during this run that the "
            "isolation and the evaluator still reject a known cheat"
        ),
        f"run folder {run_dir}"
        + (" (resuming)" if (run_dir / "ledger.jsonl").exists() else "")
        + ("" if settings.run_dir else " (default: runs/<profile>-<agent>)"),
    ]
    for line in banner:
        print(line, file=sys.stderr)
    try:
        read_program(settings.program)  # fail fast, before an engine or an agent is started
    except LoopError as exc:
        _err(str(exc))
        return ExitCode.ERROR
    if settings.backend == "local":
        logger.warning("the local backend isolates nothing; never run an untrusted agent's train.py with it")
    try:
        _ensure_data(profile.value, settings.data_dir)
    except OSError as exc:  # prepare's own errors (download, integrity) are OSError or PrepareError
        _err(f"preparing the {profile.value} data failed: {exc}; see `python prepare.py --help`")
        return ExitCode.DATA

    try:
        agent = make_agent(agent_choice.value, agent_settings)
    except AgentFatal as exc:
        _err(f"the {agent_choice.value} agent cannot start: {exc}")
        return ExitCode.CONFIG
    try:
        if args.ray:
            from harness.cluster_cmds import make_ray_sandbox

            sandbox = make_ray_sandbox(
                args.ray, settings.backend, profile.value, limits, run_dir, settings.data_dir
            )
        else:
            sandbox = _make_sandbox(settings.backend, settings.data_dir)
    except EngineUnavailable as exc:
        _err(str(exc))
        return ExitCode.ENGINE
    except ImageMissing as exc:
        _err(str(exc))
        return ExitCode.IMAGE
    except SandboxError as exc:
        _err(str(exc))
        return ExitCode.ERROR

    try:
        with _gpu_lease(profile.value, settings.gpu_ids, f"run:{run_tag}", settings.workers) as gpu_ids:
            config = RunConfig(
                run_dir=run_dir,
                run_tag=run_tag,
                profile=profile.value,  # type: ignore[arg-type]
                agent=agent_choice.value,
                backend=settings.backend,
                program=settings.program,
                train_py=settings.train_py,
                limits=limits,
                judge=settings.judge,
                retries=settings.retries,
                max_trials=settings.max_trials,
                seed=settings.seed,
                gpu_ids=tuple(gpu_ids),
                workers=settings.workers,
                canary_interval=canary_interval,
                max_cost_usd=settings.max_cost_usd,
                program_evolution_every=settings.program_evolution_every,
            )
            summary = ResearchLoop(
                config,
                sandbox,
                agent,
                progress=make_progress(),
                agent_factory=_agent_factory(agent_choice.value, agent_settings),
                leases=_cluster_seats(args.ray),
            ).run()
    except KeyboardInterrupt:
        _err(f"interrupted; everything recorded so far is in {run_dir}. Run the same command to resume.")
        _write_report_quietly(run_dir)
        return ExitCode.INTERRUPTED
    except IsolationBroken as exc:
        _isolation_banner(str(exc))
        _write_report_quietly(run_dir)
        return ExitCode.ISOLATION_BROKEN
    except CapReached as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        _write_report_quietly(run_dir)
        return ExitCode.CAP
    except HostStarved as exc:
        _err(str(exc))
        _write_report_quietly(run_dir)
        return ExitCode.HOST_STARVED
    except LoopError as exc:
        _err(str(exc))
        _write_report_quietly(run_dir)
        return exit_code_for(exc.__cause__) if isinstance(exc.__cause__, SandboxError) else ExitCode.ERROR
    except (LedgerError, LineageError, ResultsError, SandboxError) as exc:
        _err(str(exc))
        return ExitCode.ERROR

    print(f"stopped: {summary.stopped}", file=sys.stderr)
    if summary.best_val_bpb is not None and summary.baseline_val_bpb is not None:
        print(
            f"best val_bpb {summary.best_val_bpb:.6f} (baseline {summary.baseline_val_bpb:.6f}, "
            f"{summary.keeps} keeps in {summary.candidates} candidates); ledger head {summary.last_hash[:16]}",
            file=sys.stderr,
        )
    _write_report_quietly(run_dir)
    return 0


def _agent_factory(name: str, settings: Any) -> Any:
    """One agent per extra worker; None for the replay agent, whose one folder the workers share."""
    if name == "replay":
        return None
    from harness.agents import make_agent

    return lambda k: make_agent(name, settings)


def _isolation_banner(message: str) -> None:
    """The run canary was not rejected: say it so that nobody scrolling past can miss it."""
    bar = "!" * 100
    print(
        f"\n{bar}\n!!! ISOLATION OR EVALUATOR BROKEN: THE RUN HAS STOPPED (exit {ExitCode.ISOLATION_BROKEN:d})\n{bar}",
        file=sys.stderr,
    )
    for line in message.splitlines():
        print(f"!!! {line}", file=sys.stderr)
    print(bar, file=sys.stderr)


def _recorded_run_tag(run_dir: Path) -> str | None:
    """The run tag a resumed run folder was started with (it names the lineage branch)."""
    import json

    try:
        tag = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("run_tag")
    except (OSError, ValueError):
        return None
    return tag if isinstance(tag, str) else None


def _ensure_data(profile: str, data_dir: Path | None) -> None:
    """Prepare (or just verify: prepare is idempotent) the data of the profile this run resolved to.

    `make run` cannot know in advance which profile `auto` resolves to, so the run prepares it.
    """
    import prepare
    from sandbox.data.build import prepare_data

    try:
        root = prepare_data(profile, data_dir)
    except prepare.PrepareError as exc:
        raise OSError(str(exc)) from exc
    logger.info("data for profile %s ready in %s", profile, root)


def _make_sandbox(backend: str, data_dir: Path | None) -> Any:
    if backend == "local":
        from sandbox.engine.local import LocalSandbox

        return LocalSandbox(data_dir=data_dir)
    from sandbox.engine.docker import DockerSandbox

    return DockerSandbox(data_dir=data_dir)


def _cluster_seats(address: str | None) -> Any:
    """A cluster run leases nothing on this host (harness/cluster_cmds.py); None: the default."""
    if not address:
        return None
    from harness.cluster_cmds import DispatchSeats

    return DispatchSeats()


def _write_report_quietly(run_dir: Path) -> None:
    from harness.report import write_report
    from harness.run_view import ReportError

    try:
        png, md = write_report(run_dir)
    except ReportError:
        return
    except (OSError, ValueError) as exc:
        logger.warning("could not write the report: %s", exc)
        return
    print(f"report: {md} and {png}", file=sys.stderr)


# --------------------------------------------------------------------------- status, report, logs


def _run_dir(given: Path | None) -> Path:
    """The run folder named, else the only one under ./runs/."""
    if given is not None:
        return given
    runs = Path("runs")
    found = sorted(p.parent for p in runs.glob("*/ledger.jsonl")) if runs.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError("no run folder under ./runs/; name one")
    raise FileNotFoundError("several run folders under ./runs/; name one of: " + ", ".join(map(str, found)))


def cmd_status(args: argparse.Namespace) -> int:
    from harness.report import status_text
    from harness.run_view import ReportError

    try:
        print(status_text(_run_dir(args.dir)))
    except (FileNotFoundError, ReportError) as exc:
        _err(str(exc))
        return ExitCode.ERROR
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_report
    from harness.run_view import ReportError

    try:
        png, md = write_report(_run_dir(args.dir))
    except (FileNotFoundError, ReportError) as exc:
        _err(str(exc))
        return ExitCode.ERROR
    print(md)
    print(png)
    return 0


def cmd_verify_ledger(args: argparse.Namespace) -> int:
    from harness.records.chain import LEDGER_FILE, verify

    path: Path = args.dir
    target = path / LEDGER_FILE if path.is_dir() else path
    if not target.exists():
        _err(f"no ledger at {target}")
        return ExitCode.ERROR
    result = verify(target)
    if not result.ok:
        print(f"FAILED: {target}: {result.bad}")
        print(f"the {result.rows} rows before it verify (last good hash {result.last_hash})")
        return ExitCode.ERROR
    print(f"ok: {target}: {result.rows} rows verify; last hash {result.last_hash}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from harness.trial_logs import TrialNotFound, trial_logs_text

    try:
        sys.stdout.write(trial_logs_text(_run_dir(args.run_dir), args.trial))
    except (FileNotFoundError, TrialNotFound) as exc:
        _err(str(exc))
        return ExitCode.ERROR
    return 0
