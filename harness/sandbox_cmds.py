"""The commands that drive the sandbox directly: `trial`, `preflight` and `reap`.

`python -m harness trial PATH --json` runs one candidate through TRAIN and EVAL and prints the verdict
as JSON on its LAST line. Its exit code separates the two kinds of failure the project keeps apart:
0 for any verdict about the candidate (ok, crash, timeout, oom, output_limit, rejected) or about the host
(starved: TRAIN got less than --min-compute-share of its CPUs, see sandbox/compute.py), non-zero only
when the infrastructure failed, with a message saying what to run next. SIGTERM and Ctrl-C unwind
through the sandbox's cleanup; a SIGKILLed controller leaves containers that the next start reaps.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sandbox import constants as C
from sandbox.constants import ExitCode
from sandbox.preflight import cli as preflight_cli
from sandbox.verdict import exit_code_for

logger = logging.getLogger(__name__)

DEFAULT_TRIALS_DIR = Path("runs/trials")
TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_EPILOG = f"""exit codes: 0 a verdict (whatever the status), {ExitCode.ERROR:d} sandbox failure, {ExitCode.ENGINE:d} engine
unreachable (make engine), {ExitCode.IMAGE:d} image missing (make images), {ExitCode.DATA:d} data missing (make data),
{ExitCode.EVALUATOR:d} the evaluator failed (see eval.log)"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trial = sub.add_parser(
        "trial",
        help="run one candidate train.py through TRAIN and EVAL and print its verdict",
        description="Run one candidate through the TRAIN and EVAL containers and print the verdict.",
        epilog=_EPILOG,
    )
    trial.add_argument("candidate", type=Path, help="the train.py to run")
    trial.add_argument("--profile", choices=("tiny", "gpu"), default="tiny")
    trial.add_argument(
        "--backend", choices=("docker", "local"), default="docker", help="local isolates NOTHING"
    )
    trial.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)"
    )
    trial.add_argument(
        "--data-dir", type=Path, help="prepared data (default: prepare.py's folder for the profile)"
    )
    trial.add_argument(
        "--trial-dir", type=Path, help=f"where the trial's files go (default: {DEFAULT_TRIALS_DIR}/<id>)"
    )
    trial.add_argument(
        "--time-budget", type=float, metavar="S", help="override the profile's budget (seconds)"
    )
    trial.add_argument(
        "--kill-grace", type=float, metavar="S", help="override the grace after SIGTERM (seconds)"
    )
    trial.add_argument("--seed", type=int, default=0)
    trial.add_argument(
        "--min-compute-share",
        type=float,
        default=0.85,
        metavar="F",
        help="TRAIN getting less than this share of its CPUs is `starved`, not a result (0: off)",
    )
    trial.add_argument(
        "--gpus", default="", metavar="IDS", help="comma-separated GPU ids to pass (never all)"
    )
    trial.add_argument("--image", default=C.TRAINER_IMAGE, help="trainer image (resolved to its ID)")
    trial.add_argument("--json", action="store_true", help="print the verdict as one JSON line, last")
    trial.set_defaults(func=cmd_trial)

    preflight = sub.add_parser(
        "preflight",
        help="attack a TRAIN container from inside and check that every isolation property holds",
        epilog=preflight_cli.EPILOG,
    )
    preflight_cli.add_arguments(preflight)  # imports no docker-py: --help stays fast
    preflight.set_defaults(func=cmd_preflight)

    reap = sub.add_parser("reap", help="remove containers and volumes left by dead controllers")
    reap.add_argument(
        "--all", action="store_true", help="remove every sandbox container and volume, live or not"
    )
    reap.add_argument("--dry-run", action="store_true", help="list what would be removed")
    reap.set_defaults(func=cmd_reap)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the sandbox's `finally` cleanup


def cmd_trial(args: argparse.Namespace) -> int:
    from sandbox.verdict import SandboxError

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if not args.candidate.is_file():
        print(f"error: no such candidate file: {args.candidate}", file=sys.stderr)
        return 2
    try:
        verdict, trial_dir = _run_trial(args)
    except SandboxError as exc:
        code = exit_code_for(exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc), "exit_code": code}))
        return code
    _print_verdict(verdict.model_dump(mode="json") | {"trial_dir": str(trial_dir)}, as_json=args.json)
    return 0


def _run_trial(args: argparse.Namespace) -> tuple[Any, Path]:
    from sandbox.engine.limits import Limits
    from sandbox.verdict import TrialSpec

    trial_id, trial_dir = _trial_location(args.trial_dir)
    overrides: dict[str, Any] = {}
    if args.time_budget is not None:
        overrides["time_budget_s"] = args.time_budget
    if args.kill_grace is not None:
        overrides["kill_grace_s"] = args.kill_grace
    if args.runtime is not None:
        overrides["runtime"] = args.runtime
    limits = Limits.for_profile(args.profile, **overrides)
    spec = TrialSpec(
        trial_id=trial_id,
        candidate=args.candidate.resolve(),
        trial_dir=trial_dir,
        profile=args.profile,
        limits=limits,
        seed=args.seed,
        gpu_ids=tuple(g.strip() for g in args.gpus.split(",") if g.strip()),
        min_compute_share=args.min_compute_share,
    )
    if args.backend == "local":
        from sandbox.engine.local import LocalSandbox

        logger.warning("backend local: the candidate runs on the host with NO isolation")
        return LocalSandbox(data_dir=args.data_dir).run_trial(spec), trial_dir
    from sandbox.engine.docker import DockerSandbox

    return DockerSandbox(image=args.image, data_dir=args.data_dir).run_trial(spec), trial_dir


def _trial_location(trial_dir: Path | None) -> tuple[str, Path]:
    if trial_dir is not None and TRIAL_ID.match(trial_dir.resolve().name):
        return trial_dir.resolve().name, trial_dir.resolve()
    trial_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return trial_id, (trial_dir or DEFAULT_TRIALS_DIR / trial_id).resolve()


def _print_verdict(verdict: dict[str, Any], *, as_json: bool) -> None:
    val = verdict["val_bpb"]
    claimed = verdict["claimed_val_bpb"]
    lines = [
        f"trial     {verdict['trial_id']} ({verdict['backend']})",
        f"status    {verdict['status']}",
        f"val_bpb   {'-' if val is None else f'{val:.6f}'}"
        + ("" if claimed is None else f"   (the candidate claimed {claimed}; claims are not scores)"),
        f"reason    {verdict['reason'] or '-'}",
        "timings   " + ", ".join(f"{k} {v:.2f}" for k, v in verdict["timings"].items()),
        f"memory    {verdict['peak_memory_gb']} GB peak (measured by the controller)",
        f"compute   {_compute_line(verdict.get('compute'))}",
        f"images    {verdict['images'] or '-'}",
        f"folder    {verdict['trial_dir']}",
    ]
    print("\n".join(lines), file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(verdict, separators=(",", ":")))


def _compute_line(compute: dict[str, Any] | None) -> str:
    from sandbox.compute import ComputeReport

    if not compute:
        return "-"
    return ComputeReport.model_validate(compute).summary() + " (measured by the controller)"


def cmd_preflight(args: argparse.Namespace) -> int:
    return preflight_cli.main(args)


def cmd_reap(args: argparse.Namespace) -> int:
    from sandbox.engine.docker_config import connect
    from sandbox.engine.reaper import reap
    from sandbox.verdict import SandboxError

    try:
        report = reap(connect(), everything=args.all, dry_run=args.dry_run)
    except SandboxError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.containers)} containers and {len(report.volumes)} volumes")
    for name in report.containers + report.volumes:
        print(f"  {name}")
    for failure in report.failures:
        print(f"  FAILED {failure}", file=sys.stderr)
    return ExitCode.ERROR if report.failures else ExitCode.OK
