"""Command-line entry point: one argparse parser, subcommands registered by the modules that own them.

`harness.sandbox_cmds` registers the commands that run containers directly (trial, preflight, reap);
`harness.loop_cmds` registers the research loop's commands (run, status, report, verify-ledger, logs).
Each command is a function `(argparse.Namespace) -> int` (the exit code). Heavy imports happen inside
the commands so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from harness import loop_cmds, sandbox_cmds

    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Autoresearch with the metric out of the agent's reach.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sandbox_cmds.register(sub)
    loop_cmds.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else getattr(logging, os.environ.get("AUTORESEARCH_LOG", "INFO"))
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.func(args)
    return code
