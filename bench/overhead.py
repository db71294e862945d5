"""The fixed cost of isolation: one trial through DockerSandbox against the same trial as bare processes.

    python bench/overhead.py [--runs 3] [--runtime runsc] [--no-prewarm] [--candidate PATH]
                             [--data-dir D] [--json]

A trivial candidate (tests/candidates/tiny_export.py: an untrained per-token model, exported at once)
runs through both backends, alternating, `--runs` times each. Its training time is only Python and
torch start-up plus the export, and the evaluator's work is the same on both sides, so the difference
of the totals is what the sandbox adds per trial. The goal is at most 3 s.

The Docker trial is broken down by what the issue asks for, from its verdict timings, the engine's own
container timestamps (StartedAt, FinishedAt in the saved inspect JSON) and the evaluator's report:
  create    volumes, the holder (created and started), TRAIN and EVAL containers
  start     the start requests (EVAL's is inside TRAIN when it is pre-warmed, the default)
  stop      per container, its wall as the controller saw it minus the engine's StartedAt..FinishedAt:
            start-up before the process runs plus exit detection (polling) after it ends
  remove    teardown: every container and volume, in parallel
  evaluator interpreter and imports (report `startup`) and warm-up (`prepare`): before the go when
            pre-warmed, so off the critical path; then the data, the graph load (`validate` +
            `load`), probes, score
  between   TRAIN's logs, the output-channel probe, the go (exec), EVAL's logs, the report fetch
`--no-prewarm` starts EVAL only after TRAIN, as before the pre-warm existed, for comparison.
`--candidate` runs another train.py (e.g. the baseline: then train_share says how much of a real
trial's wall is spent inside TRAIN, and, from train.py's own `tokens_per_second`, train_speed_ratio
says whether TRAIN trains slower in the sandbox than bare, e.g. beside the pre-warmed evaluator).

Medians are reported (the machine is shared; the first trial also warms the page cache). `--json`
prints one line: fixed_overhead_s, ratio (docker total / local total), train_share, the per-step
breakdown of the Docker trial and the medians of both backends.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.constants import Status  # noqa: E402
from sandbox.engine.limits import Limits  # noqa: E402
from sandbox.verdict import TrialSpec, Verdict  # noqa: E402

CANDIDATE = ROOT / "tests" / "candidates" / "tiny_export.py"
GOAL_S = 3.0
PHASES = ("setup_s", "train_wall_s", "eval_wall_s", "teardown_s", "total_s")
# The Docker trial's own steps (sandbox/engine/docker.py), in order.
STEPS = (
    "volumes_s",
    "holder_s",
    "train_create_s",
    "eval_create_s",  # in setup when pre-warmed, after TRAIN otherwise
    "train_start_s",  # inside train_wall_s: the clock starts before the start request
    "eval_start_s",  # inside train_wall_s when pre-warmed, inside eval_wall_s otherwise
    "train_logs_s",
    "output_probe_s",
    "eval_go_s",  # pre-warmed only: the exec that releases the evaluator (inside eval_wall_s)
    "eval_logs_s",
    "report_fetch_s",
)
# Derived from the engine's timestamps and the evaluator's report (see the module docstring).
DERIVED = (
    "train_in_container_s",
    "train_start_stop_s",
    "eval_in_container_s",
    "eval_start_stop_s",
    "evaluator_startup_s",
    "evaluator_prepare_s",
    "evaluator_data_s",
    "graph_load_s",
    "probes_s",
    "score_s",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="trials per backend (default 3)")
    parser.add_argument("--runtime", choices=("runc", "runsc"), help="container runtime for the Docker side")
    parser.add_argument("--no-prewarm", action="store_true", help="start EVAL after TRAIN (the old way)")
    parser.add_argument(
        "--candidate", type=Path, default=CANDIDATE, help="train.py to run (default: trivial)"
    )
    parser.add_argument("--docker-only", action="store_true", help="skip the bare-process side")
    parser.add_argument("--data-dir", type=Path, help="prepared tiny data (default: prepare.py's folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from sandbox.engine.docker import DockerSandbox
    from sandbox.engine.local import LocalSandbox

    limits = Limits.for_profile("tiny", runtime=args.runtime)
    docker_sandbox = DockerSandbox(data_dir=args.data_dir, prewarm_eval=not args.no_prewarm)
    sides: list[tuple[str, Any]] = [("docker", docker_sandbox)]
    if not args.docker_only:
        sides.insert(0, ("local", LocalSandbox(data_dir=args.data_dir)))
    results: dict[str, list[Verdict]] = {name: [] for name, _ in sides}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for i in range(args.runs):
            for name, sandbox in sides:
                spec = TrialSpec(
                    trial_id=f"overhead-{name}-{i}",
                    candidate=args.candidate,
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
                extra = train_speed(spec.trial_dir)
                if name == "docker":
                    extra |= derived_timings(verdict, spec.trial_dir)
                verdict = verdict.model_copy(update={"timings": verdict.timings | extra})
                t = verdict.timings
                print(
                    f"  {name} run {i + 1}: {time.monotonic() - started:.2f} s "
                    f"(train {t['train_wall_s']:.2f}, eval {t.get('eval_wall_s', 0):.2f}, "
                    f"share {t['train_wall_s'] / t['total_s']:.3f})",
                    file=sys.stderr,
                )
                results[name].append(verdict)

    summary = _summarise(
        results,
        runtime=args.runtime or "default",
        image=docker_sandbox.image_id,
        prewarm=not args.no_prewarm,
        candidate=str(
            args.candidate.relative_to(ROOT) if args.candidate.is_relative_to(ROOT) else args.candidate
        ),
    )
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        _print_table(summary)
    return 0


def train_speed(trial_dir: Path) -> dict[str, float]:
    """TRAIN's own throughput, when the candidate reports it (train.py's ``tokens_per_second:`` line).

    Whatever the sandbox runs beside TRAIN (the pre-warmed evaluator's start-up) would show here as
    fewer tokens per second than the bare process trains at.
    """
    log = trial_dir / "train.log"
    found = (
        re.findall(r"^tokens_per_second:\s*([0-9.]+)\s*$", log.read_text(errors="replace"), re.M)
        if log.is_file()
        else []
    )
    return {"train_tokens_per_s": float(found[-1])} if found else {}


def _engine_time(value: str) -> float:
    """The engine's RFC 3339 timestamp (nanoseconds) as epoch seconds."""
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def derived_timings(verdict: Verdict, trial_dir: Path) -> dict[str, float]:
    """What the verdict does not say directly: time inside the containers, start+stop cost, evaluator phases."""
    out: dict[str, float] = {}
    t = verdict.timings
    train_state = trial_dir / "train_container.json"
    if train_state.is_file():
        state = json.loads(train_state.read_text())["State"]
        inside = _engine_time(state["FinishedAt"]) - _engine_time(state["StartedAt"])
        out["train_in_container_s"] = inside
        out["train_start_stop_s"] = t["train_wall_s"] - inside
    report_timings = verdict.report.timings if verdict.report is not None else {}
    if report_timings:
        out["evaluator_startup_s"] = report_timings.get("startup", 0.0)
        out["evaluator_prepare_s"] = report_timings.get("prepare", 0.0)
        out["evaluator_data_s"] = report_timings.get("data", 0.0)
        out["graph_load_s"] = report_timings.get("validate", 0.0) + report_timings.get("load", 0.0)
        out["probes_s"] = report_timings.get("probes", 0.0)
        out["score_s"] = report_timings.get("score", 0.0)
        # After the go the evaluator loads the data and judges; without a pre-warm it also starts and prepares.
        inside_eval = out["evaluator_data_s"] + report_timings.get("judge", 0.0)
        if "eval_go_s" not in t:
            inside_eval += out["evaluator_startup_s"] + out["evaluator_prepare_s"]
        out["eval_in_container_s"] = inside_eval
        out["eval_start_stop_s"] = t.get("eval_wall_s", 0.0) - inside_eval
    return out


def _median(verdicts: list[Verdict], key: str) -> float:
    return round(statistics.median(v.timings.get(key, 0.0) for v in verdicts), 3)


def _range(verdicts: list[Verdict], key: str) -> list[float]:
    values = [v.timings.get(key, 0.0) for v in verdicts]
    return [round(min(values), 3), round(max(values), 3)]


def _summarise(
    results: dict[str, list[Verdict]], *, runtime: str, image: str, prewarm: bool, candidate: str
) -> dict[str, Any]:
    docker_runs = results["docker"]
    docker = {key: _median(docker_runs, key) for key in PHASES + STEPS + DERIVED}
    shares = [v.timings["train_wall_s"] / v.timings["total_s"] for v in docker_runs]
    summary: dict[str, Any] = {
        "runs": len(docker_runs),
        "runtime": runtime,
        "prewarm": prewarm,
        "candidate": candidate,
        "image": image,
        "goal_s": GOAL_S,
        "train_share": round(statistics.median(shares), 4),
        "train_share_range": [round(min(shares), 4), round(max(shares), 4)],
        "non_train_s": round(
            statistics.median(v.timings["total_s"] - v.timings["train_wall_s"] for v in docker_runs), 3
        ),
        "docker": docker,
        "docker_range": {key: _range(docker_runs, key) for key in PHASES},
        "steps": {k: docker[k] for k in STEPS},
        "derived": {k: docker[k] for k in DERIVED},
    }
    if "local" in results:
        local = {key: _median(results["local"], key) for key in PHASES}
        pairs = list(zip(docker_runs, results["local"], strict=True))

        def added(key: str) -> float:
            """Median over the (docker, local) pairs of what docker added in this phase."""
            return round(
                statistics.median(d.timings.get(key, 0.0) - lo.timings.get(key, 0.0) for d, lo in pairs), 3
            )

        speeds = [
            (d.timings["train_tokens_per_s"], lo.timings["train_tokens_per_s"])
            for d, lo in pairs
            if "train_tokens_per_s" in d.timings and "train_tokens_per_s" in lo.timings
        ]
        if speeds:  # TRAIN's tokens/s in the sandbox over bare, median of the run-by-run ratios
            summary["train_speed_ratio"] = round(statistics.median(d / lo for d, lo in speeds), 3)
            summary["train_tokens_per_s"] = {
                "docker": statistics.median(d for d, _ in speeds),
                "local": statistics.median(lo for _, lo in speeds),
            }
        summary |= {
            "fixed_overhead_s": added("total_s"),
            "ratio": round(docker["total_s"] / local["total_s"], 3),
            "breakdown": {key: added(key) for key in PHASES if key != "total_s"},
            "local": local,
        }
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    docker = summary["docker"]
    local = summary.get("local")
    print(
        f"trial overhead, median of {summary['runs']} (runtime {summary['runtime']}, "
        f"pre-warm {'on' if summary['prewarm'] else 'off'}, {summary['candidate']}, image {summary['image'][:19]})"
    )
    print(
        f"{'phase':<16}{'docker s':>10}{'range':>16}" + (f"{'local s':>10}{'added s':>10}" if local else "")
    )
    added = (summary["breakdown"] | {"total_s": summary["fixed_overhead_s"]}) if local else {}
    for key in PHASES:
        lo, hi = summary["docker_range"][key]
        line = f"{key:<16}{docker[key]:>10.2f}{f'{lo:.2f}-{hi:.2f}':>16}"
        if local:
            line += f"{local[key]:>10.2f}{added[key]:>10.2f}"
        print(line)
    if local:
        print("(added: the median over the runs of docker minus local, run by run)")
    print("docker steps:")
    for key in STEPS:
        print(f"  {key:<30}{docker[key]:>8.3f}")
    print("derived (engine timestamps, evaluator report):")
    for key in DERIVED:
        print(f"  {key:<30}{docker[key]:>8.3f}")
    print(
        f"TRAIN share of the trial's wall: {summary['train_share']:.3f} "
        f"(range {summary['train_share_range'][0]:.3f}-{summary['train_share_range'][1]:.3f}); "
        f"outside TRAIN: {summary['non_train_s']:.2f} s"
    )
    if "train_speed_ratio" in summary:
        speed = summary["train_tokens_per_s"]
        print(
            f"TRAIN's own speed: {speed['docker']:.0f} tokens/s in the sandbox, {speed['local']:.0f} bare "
            f"(ratio {summary['train_speed_ratio']:.3f}: what running beside the pre-warmed evaluator costs it)"
        )
    if local:
        verdict = "within" if summary["fixed_overhead_s"] <= GOAL_S else "OVER"
        print(
            f"fixed overhead {summary['fixed_overhead_s']:.2f} s per trial ({verdict} the {GOAL_S:.0f} s goal), "
            f"ratio {summary['ratio']:.2f}x for this candidate"
        )


if __name__ == "__main__":
    sys.exit(main())
