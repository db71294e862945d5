"""`python -m harness preflight`: its flags, its table, its exit codes.

Deliberate: importing this module loads neither docker-py nor the engine side (runner.py), so the
harness's parser declares preflight's flags by calling `add_arguments` here, once, and --help stays
fast. Exit codes are the project's one `ExitCode` table: 0 every property holds, 8 one does not
(isolation broken), 1 the check itself failed, 3/4/5 engine, image or data missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sandbox import constants as C
from sandbox.constants import ExitCode
from sandbox.engine.limits import Limits
from sandbox.preflight.facts import HardeningTier, PreflightResult
from sandbox.verdict import SandboxError, exit_code_for

logger = logging.getLogger(__name__)

EPILOG = (
    f"exit codes: {ExitCode.OK:d} every property holds, {ExitCode.ISOLATION_BROKEN:d} a property does not "
    f"hold (isolation broken), {ExitCode.ERROR:d} the check could not run, {ExitCode.ENGINE:d} engine "
    f"unreachable (make engine), {ExitCode.IMAGE:d} image missing (make images), {ExitCode.DATA:d} data "
    "missing (make data)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register preflight's flags on a (sub)parser."""
    parser.add_argument(
        "--profile", choices=("tiny", "gpu"), default="tiny", help="limits and data of this profile"
    )
    parser.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="prepared data (default: prepare.py's folder for the profile)"
    )
    parser.add_argument("--image", default=C.TRAINER_IMAGE, help="trainer image to probe")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line, last")


def format_table(result: PreflightResult) -> str:
    width = max(len(c.name) for c in result.checks)
    failed = [c for c in result.checks if not c.passed]
    remap = ""
    if result.tier is HardeningTier.USERNS_REMAP and result.uid_map:
        inside, host, count = result.uid_map[0]
        remap = f", uids {inside}-{inside + count - 1} = host {host}-{host + count - 1}"
    lines = [
        f"preflight: profile {result.profile}, runtime {result.runtime} (tier: {result.tier.value}{remap}), "
        f"engine {result.engine_version}, cgroup v{result.cgroup_version}",
        f"image {result.image} ({result.image_id[:19]})",
        "",
        f"{'PROPERTY':<{width}}  RESULT  DETAIL",
    ]
    lines += [f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}" for c in result.checks]
    lines.append("")
    verdict = (
        f"all {len(result.checks)} properties hold"
        if not failed
        else f"{len(failed)} of {len(result.checks)} properties FAILED: {', '.join(c.name for c in failed)}"
    )
    lines.append(f"{verdict} ({result.wall_s:.1f} s)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m harness preflight`: the result table (and a JSON line with --json); see EPILOG."""
    # docker-py and the engine side load only once the command really runs
    from sandbox.engine.docker_config import connect
    from sandbox.preflight.runner import run_preflight

    profile = getattr(args, "profile", None) or "tiny"
    runtime = getattr(args, "runtime", None)
    as_json = bool(getattr(args, "json", False))
    try:
        limits = Limits.for_profile(profile, **({"runtime": runtime} if runtime else {}))
        client = connect()
        result = run_preflight(
            client,
            limits,
            getattr(args, "data_dir", None),
            profile=profile,
            image=getattr(args, "image", None) or C.TRAINER_IMAGE,
        )
    except SandboxError as exc:
        code = exit_code_for(exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if as_json:
            print(
                json.dumps(
                    {"passed": False, "error": type(exc).__name__, "message": str(exc), "exit_code": code}
                )
            )
        return code
    print(format_table(result), file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(result.model_dump_json())
    return ExitCode.OK if result.passed else ExitCode.ISOLATION_BROKEN
