"""The fixed cost of isolation: one trial through DockerSandbox against the same trial as bare processes.

    python bench/overhead.py [--runs 3] [--runtime runsc] [--data-dir D] [--json]

A trivial candidate (tests/candidates/tiny_export.py: an untrained per-token model, exported at once)
runs through both backends, alternating, `--runs` times each. Its training time is only Python and
torch start-up plus the export, and the evaluator's work is the same on both sides, so the difference
of the totals is what the sandbox adds per trial: two volumes, the holder, creating, starting,
polling, stopping and removing three containers, the output probe, the report fetch, and the
container start-up of both Python processes. The goal is at most 3 s.

Medians are reported (the machine is shared; the first trial also warms the page cache). `--json`
prints one line: fixed_overhead_s, ratio (docker total / local total), the per-step breakdown of
the Docker trial and the medians of both backends.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.constants import Status  # noqa: E402
from sandbox.limits import Limits  # noqa: E402
from sandbox.verdict import TrialSpec, Verdict  # noqa: E402

CANDIDATE = ROOT / "tests" / "candidates" / "tiny_export.py"
GOAL_S = 3.0
PHASES = ("setup_s", "train_wall_s", "eval_wall_s", "teardown_s", "total_s")
# The Docker trial's own steps (sandbox/docker_backend.py), in order.
STEPS = (
    "volumes_s",
    "holder_s",
    "train_create_s",
    "train_start_s",  # inside train_wall_s: the clock starts before the start request
    "train_logs_s",
    "output_probe_s",
    "eval_create_s",
    "eval_start_s",  # inside eval_wall_s
    "eval_logs_s",
    "report_fetch_s",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="trials per backend (default 3)")
    parser.add_argument("--runtime", choices=("runc", "runsc"), help="container runtime for the Docker side")
    parser.add_argument("--data-dir", type=Path, help="prepared tiny data (default: prepare.py's folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from sandbox.docker_backend import DockerSandbox
    from sandbox.local_backend import LocalSandbox

    limits = Limits.for_profile("tiny", runtime=args.runtime)
    docker_sandbox = DockerSandbox(data_dir=args.data_dir)
    local_sandbox = LocalSandbox(data_dir=args.data_dir)
    results: dict[str, list[Verdict]] = {"docker": [], "local": []}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for i in range(args.runs):
            for name, sandbox in (("local", local_sandbox), ("docker", docker_sandbox)):
                spec = TrialSpec(
                    trial_id=f"overhead-{name}-{i}",
                    candidate=CANDIDATE,
                    trial_dir=Path(tmp) / f"{name}-{i}",
                    profile="tiny",
                    limits=limits,
                )
                started = time.monotonic()
                verdict = sandbox.run_trial(spec)
                if verdict.status is not Status.OK:
                    print(
                        f"error: the {name} trial ended {verdict.status}: {verdict.reason}", file=sys.stderr
                    )
                    return 1
                print(f"  {name} run {i + 1}: {time.monotonic() - started:.2f} s", file=sys.stderr)
                results[name].append(verdict)

    summary = _summarise(results, runtime=args.runtime or "default", image=docker_sandbox.image_id)
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        _print_table(summary)
    return 0


def _median(verdicts: list[Verdict], key: str) -> float:
    return round(statistics.median(v.timings.get(key, 0.0) for v in verdicts), 3)


def _summarise(results: dict[str, list[Verdict]], *, runtime: str, image: str) -> dict[str, Any]:
    docker = {key: _median(results["docker"], key) for key in PHASES + STEPS}
    local = {key: _median(results["local"], key) for key in PHASES}
    pairs = list(zip(results["docker"], results["local"], strict=True))

    def added(key: str) -> float:
        """Median over the (docker, local) pairs of what docker added in this phase."""
        return round(
            statistics.median(d.timings.get(key, 0.0) - lo.timings.get(key, 0.0) for d, lo in pairs), 3
        )

    return {
        "fixed_overhead_s": added("total_s"),
        "ratio": round(docker["total_s"] / local["total_s"], 3),
        "goal_s": GOAL_S,
        "runs": len(pairs),
        "runtime": runtime,
        "image": image,
        "breakdown": {key: added(key) for key in PHASES if key != "total_s"}
        | {"steps": {k: docker[k] for k in STEPS}},
        "docker": docker,
        "local": local,
    }


def _print_table(summary: dict[str, Any]) -> None:
    docker, local = summary["docker"], summary["local"]
    print(
        f"trial overhead, median of {summary['runs']} (runtime {summary['runtime']}, image {summary['image'][:19]})"
    )
    print(f"{'phase':<16}{'docker s':>10}{'local s':>10}{'added s':>10}")
    added = summary["breakdown"] | {"total_s": summary["fixed_overhead_s"]}
    for key in PHASES:
        print(f"{key:<16}{docker[key]:>10.2f}{local[key]:>10.2f}{added[key]:>10.2f}")
    print("(added: the median over the runs of docker minus local, run by run)")
    print("docker steps (inside setup, after TRAIN and after EVAL):")
    for key in STEPS:
        print(f"  {key:<14}{docker[key]:>10.3f}")
    verdict = "within" if summary["fixed_overhead_s"] <= GOAL_S else "OVER"
    print(
        f"fixed overhead {summary['fixed_overhead_s']:.2f} s per trial ({verdict} the {GOAL_S:.0f} s goal), "
        f"ratio {summary['ratio']:.2f}x for this trivial candidate"
    )


if __name__ == "__main__":
    sys.exit(main())
