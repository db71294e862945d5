"""Throughput of the whole research loop: trials per hour with 1 worker against N workers.

    python bench/throughput.py [--workers 1,2] [--trials 8] [--time-budget S] [--baseline-repeats 2]
                               [--cpus-per-worker 1] [--runtime runsc] [--data-dir D] [--keep DIR] [--json]
                               [--ray]

`--ray` adds, after the one-host configurations, the same counts as Ray worker nodes on this host
(one cpuset each; bench/ray_nodes.py), columns "ray 1", "ray 2", ..., and the ratio of the largest
node count's steady runs/h to the same count of one-host workers (the issue's goal: >= 0.85).

Each configuration is a real `ResearchLoop` run in a fresh run folder, one after the other: the tiny
profile, the offline agent, the repository's train.py and program.md, DockerSandbox, and a private
cpuset lease table giving each worker its own `--cpus-per-worker` CPUs (by default one core each, so
on a 2-core host `--workers 1,2` compares one core against two, and the ideal ratio is 2).

Reported per configuration, from the run's own ledger (so nothing is double-counted):
- candidate trials per hour, over the candidate phase only: from the moment the last baseline run
  landed (the baseline is a one-off cost of every run) to the end of the run; all trials (baselines
  included) per hour over the whole wall-clock; and sandbox runs per hour (a keep is run twice, so
  runs/h is the measure that does not depend on how many proposals happened to be would-be keeps);
- the same in steady state: over the window from the last baseline landing to the moment the first
  worker had no trial left to claim, since the end of a finite run is a tail where fewer than N workers
  are busy (an overnight run has none); each trial counts for the fraction of its span inside the
  window (a trial cut by an edge counts in part), so a few trials per worker still give a fair rate;
- TRAIN share: the sum of the TRAIN containers' wall time (`train_wall_s` of every run) divided by
  wall-clock x workers, again for the candidate phase and the whole run: how much of the leased
  capacity trains, the rest being container start-up, evaluation, the agent and the controller;
- that the ledger verifies, results.tsv holds exactly its rows, and that the TRAIN and EVAL
  containers of every run were created with the worker's cpuset (from the engine's inspect output);
- the load average (1 min) before and after, since a shared machine moves these numbers.

The ratios are the largest worker count's rates over the smallest's. The goal (>= 1.8 for 2 workers
against 1, `goal_met`) is judged on steady-state sandbox runs per hour: a trial whose first run looks
like a keep is run twice, and how many of a handful of proposals happen to be would-be keeps differs
between the configurations (the workers' agents see different histories, so they propose different
candidates), which moves trials per hour by whole runs; over a long run both configurations confirm at
the same rate, and trials per hour scale as runs per hour do. Both are printed. `--workers 2,1` runs
the configurations in the other order, to see how much the machine's load drifting during the
measurement moves it. For the TRAIN share of the default loop (one worker on every CPU), run
`--workers 1 --cpus-per-worker 2`. On a loaded machine a one-core TRAIN may not make the tiny
profile's 30 s (train.py trains until its own 25 s deadline, then exports), and a
baseline that times out stops the run: `--time-budget 60` leaves room, and train.py still stops at
its own deadline, so on a quiet machine the numbers are those of the 30 s budget.

`--json` prints one line. Takes minutes: every trial trains until train.py's deadline (or the
controller's SIGTERM at `--time-budget`) and is then evaluated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.judge import JudgeSettings, JudgeState  # noqa: E402
from harness.records.chain import Ledger, verify  # noqa: E402
from harness.records.schemas import TrialRecord  # noqa: E402
from sandbox import constants as C  # noqa: E402

GOAL_RATIO = 1.8
RAY_GOAL_RATIO = 0.85  # k Ray nodes against k workers on one host, steady runs/h (issue 14)


class _Lines:
    """A progress view printing one line per recorded trial (stderr)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.monotonic()

    def start(self, banner: Sequence[str]) -> None:
        return None

    def phase(self, trial_id: str, text: str) -> None:
        return None

    def recorded(self, record: TrialRecord, state: JudgeState) -> None:
        val = f"{record.val_bpb:.4f}" if record.val_bpb is not None else "-"
        train = sum(r.timings.get("train_wall_s", 0.0) for r in record.runs)
        print(
            f"  [{self.label}] {time.monotonic() - self.t0:7.1f}s {record.trial_id} {record.kind:9} "
            f"{record.decision.value:8} val_bpb {val} runs {len(record.runs)} train {train:.1f}s "
            f"on cpuset {record.limits.get('cpuset_cpus')}",
            file=sys.stderr,
        )

    def stop(self) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, in order (default 1,2)")
    parser.add_argument(
        "--trials", type=int, default=8, help="candidate trials per configuration (default 8)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="TRAIN budget per trial, s (default: the tiny profile's)",
    )
    parser.add_argument("--baseline-repeats", type=int, default=2, help="baseline runs per configuration")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs in each worker's cpuset")
    parser.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)"
    )
    parser.add_argument("--data-dir", type=Path, help="prepared tiny data (default: prepare.py's folder)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' base seed")
    parser.add_argument("--keep", type=Path, help="keep the run folders under DIR (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--ray", action="store_true", help="also run the counts as Ray worker nodes (one cpuset each)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the loop raises its loggers to INFO for its files
        handler.setLevel(logging.WARNING)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if not counts or min(counts) < 1:
        parser.error("--workers: a comma-separated list of counts >= 1")
    cpus = sorted(os.sched_getaffinity(0))
    if max(counts) * args.cpus_per_worker > len(cpus):
        parser.error(f"{max(counts)} workers x {args.cpus_per_worker} CPUs do not fit in {len(cpus)} CPUs")

    from sandbox.data.build import prepare_data
    from sandbox.engine.docker import DockerSandbox

    prepare_data("tiny", args.data_dir)
    sandbox = DockerSandbox(data_dir=args.data_dir)
    results = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        base = args.keep or Path(tmp)
        for n in counts:
            print(f"{n} worker(s), {args.trials} candidate trials:", file=sys.stderr)
            results.append(_measure(n, args, sandbox, base / f"w{n}", cpus[: n * args.cpus_per_worker]))
        ray_results = _measure_ray(counts, args, base, cpus) if args.ray else []
    summary = _summarise(results, image=sandbox.image_id, args=args)
    if ray_results:
        summary["configs"] = results + ray_results
        local = {r["workers"]: r for r in results}
        top = max(r["workers"] for r in ray_results)
        mine = next(r for r in ray_results if r["workers"] == top)
        summary["ray_vs_local"] = round(mine["steady_runs_per_hour"] / local[top]["steady_runs_per_hour"], 3)
        summary["ray_goal_met"] = summary["ray_vs_local"] >= RAY_GOAL_RATIO
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        _print_table(summary)
    return 0 if all(r["ledger_ok"] and r["cpusets_ok"] for r in results + ray_results) else 1


def _measure_ray(
    counts: list[int], args: argparse.Namespace, base: Path, cpus: list[int]
) -> list[dict[str, Any]]:
    """The counts as Ray worker nodes: one cluster, a RaySandbox on the first k nodes per configuration."""
    from bench import ray_nodes
    from harness.records.chain import Ledger

    out: list[dict[str, Any]] = []
    with ray_nodes.local_cluster(max(counts), cpus, args.cpus_per_worker) as (cluster, by_node):
        for n in counts:
            print(f"{n} Ray node(s), {args.trials} candidate trials:", file=sys.stderr)
            run_dir = base / f"ray{n}"
            limits = _limits(args)
            sandbox = ray_nodes.ray_sandbox(cluster, n, run_dir, limits, args.data_dir)
            result = _measure(n, args, sandbox, run_dir, cpus, ray=True)
            records = Ledger(run_dir / "ledger.jsonl").records()
            result["cpusets_ok"] = ray_nodes.cpusets_ok(run_dir, records, by_node)
            result["label"] = f"ray {n}"
            out.append(result)
    return out


def _limits(args: argparse.Namespace) -> Any:
    from sandbox.engine.limits import Limits

    overrides: dict[str, Any] = {"runtime": args.runtime}
    if args.time_budget is not None:
        overrides["time_budget_s"] = args.time_budget
    return Limits.for_profile("tiny", **{k: v for k, v in overrides.items() if v is not None})


def _measure(
    n: int, args: argparse.Namespace, sandbox: Any, run_dir: Path, cpus: list[int], *, ray: bool = False
) -> dict[str, Any]:
    from harness.agents import AgentSettings, make_agent
    from harness.cluster_cmds import DispatchSeats
    from harness.config import RunConfig
    from harness.loop import ResearchLoop
    from sandbox.engine.gpu import CpuSetLeases

    config = RunConfig(
        run_dir=run_dir,
        run_tag=f"throughput-{'ray' if ray else 'w'}{n}",
        profile="tiny",
        agent="offline",
        backend="docker",
        program=ROOT / "program.md",
        train_py=ROOT / "train.py",
        limits=_limits(args),
        judge=JudgeSettings(baseline_repeats=args.baseline_repeats),
        max_trials=args.trials,
        seed=args.seed,
        workers=n,
    )
    leases: Any = (
        DispatchSeats() if ray else CpuSetLeases(run_dir.parent / f"leases-w{n}.json", workers=n, cpus=cpus)
    )
    settings = AgentSettings(kind="offline", seed=args.seed)
    loop = ResearchLoop(
        config,
        sandbox,
        make_agent("offline", settings),
        progress=_Lines(f"{n}w"),
        agent_factory=lambda k: make_agent("offline", settings),
        leases=leases,
    )
    load_before = os.getloadavg()[0]
    started = time.time()
    summary = loop.run()
    ended = time.time()
    load_after = os.getloadavg()[0]
    return _metrics(n, run_dir, started, ended, load_before, load_after, summary.stopped)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _train_s(records: Sequence[TrialRecord]) -> float:
    return sum(run.timings.get("train_wall_s", 0.0) for r in records for run in r.runs)


def in_window(spans: Sequence[tuple[float, float, int]], start: float, end: float) -> tuple[float, float]:
    """(trials, runs) inside [start, end], each (started, finished, runs) span counted for the fraction
    of it that lies inside the window."""
    trials = runs = 0.0
    for began, finished, n_runs in spans:
        inside = max(0.0, min(finished, end) - max(began, start)) / max(finished - began, 1e-9)
        trials += inside
        runs += inside * n_runs
    return trials, runs


def _cpusets_ok(run_dir: Path, records: Sequence[TrialRecord]) -> bool:
    """TRAIN and EVAL of every run were created with the record's cpuset (the engine's own inspect output)."""
    for record in records:
        want = record.limits.get("cpuset_cpus")
        for run in record.runs:
            folder = run_dir / "trials" / record.trial_id / run.folder
            for state in (C.TRAIN_STATE_FILE, C.EVAL_STATE_FILE):
                path = folder / state
                if not path.exists():
                    if state == C.EVAL_STATE_FILE and run.status.value != "ok":
                        continue  # no EVAL after a failed TRAIN
                    return False
                got = json.loads(path.read_text(encoding="utf-8"))["HostConfig"].get("CpusetCpus")
                if got != want:
                    return False
    return True


def _metrics(
    n: int, run_dir: Path, started: float, ended: float, load_before: float, load_after: float, stopped: str
) -> dict[str, Any]:
    from harness.records.results import ResultsFile, format_row, rows_for

    records = Ledger(run_dir / "ledger.jsonl").records()
    check = verify(run_dir / "ledger.jsonl")
    tsv = ResultsFile(run_dir / "results.tsv").read()
    ledger_ok = check.ok and [format_row(r) for r in tsv] == [format_row(r) for r in rows_for(records)]
    baselines = [r for r in records if r.kind == "baseline"]
    candidates = [r for r in records if r.kind == "candidate"]
    baseline_end = max((_ts(r.finished_at) for r in baselines), default=started)
    wall = ended - started
    cand_wall = ended - baseline_end
    runs = sum(len(r.runs) for r in candidates)
    # Steady state: until the first worker ran out of trials to claim (the run's end is a tail where
    # fewer than N workers are busy; an overnight run has none).
    last_by_worker: dict[str, float] = {}
    for r in candidates:
        last_by_worker[r.worker] = max(last_by_worker.get(r.worker, 0.0), _ts(r.finished_at))
    steady_end = min(last_by_worker.values(), default=ended)
    steady_wall = max(steady_end - baseline_end, 1e-9)
    # Each trial counts for the fraction of its own span [started_at, finished_at] that falls inside the
    # window, so a trial cut by either edge counts in part instead of all or nothing: with a handful of
    # trials per worker, whole-trial counting moves the rate by a whole trial at either edge.
    steady_trials, steady_runs = in_window(
        [(_ts(r.started_at), _ts(r.finished_at), len(r.runs)) for r in candidates], baseline_end, steady_end
    )
    return {
        "workers": n,
        "stopped": stopped,
        "trials": len(records),
        "candidates": len(candidates),
        "candidate_runs": runs,
        "keeps": sum(r.decision.value == "keep" for r in candidates),
        "scored": sum(r.status.value == "ok" for r in candidates),  # the rest skipped EVAL: cheaper trials
        "wall_s": round(wall, 1),
        "baseline_s": round(baseline_end - started, 1),
        "candidate_wall_s": round(cand_wall, 1),
        "candidates_per_hour": round(len(candidates) / cand_wall * 3600, 2),
        "candidate_runs_per_hour": round(runs / cand_wall * 3600, 2),
        "steady_wall_s": round(steady_wall, 1),
        "steady_candidates_per_hour": round(steady_trials / steady_wall * 3600, 2),
        "steady_runs_per_hour": round(steady_runs / steady_wall * 3600, 2),
        "trials_per_hour": round(len(records) / wall * 3600, 2),
        "train_share_candidates": round(_train_s(candidates) / (cand_wall * n), 3),
        "train_share": round(_train_s(records) / (wall * n), 3),
        "mean_run_total_s": round(
            sum(run.timings.get("total_s", 0.0) for r in candidates for run in r.runs) / max(runs, 1), 1
        ),
        "mean_eval_wall_s": round(
            sum(run.timings.get("eval_wall_s", 0.0) for r in candidates for run in r.runs) / max(runs, 1), 1
        ),
        "ledger_ok": ledger_ok,
        "ledger_rows": check.rows,
        "cpusets_ok": _cpusets_ok(run_dir, records),
        "cpusets": sorted({str(r.limits.get("cpuset_cpus")) for r in records}),
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(load_after, 2),
    }


def _summarise(results: list[dict[str, Any]], *, image: str, args: argparse.Namespace) -> dict[str, Any]:
    first = min(results, key=lambda r: r["workers"])  # the ratio: most workers over fewest, in any order
    last = max(results, key=lambda r: r["workers"])
    ratio = (
        last["candidates_per_hour"] / first["candidates_per_hour"] if first["candidates_per_hour"] else 0.0
    )
    runs_ratio = (
        last["candidate_runs_per_hour"] / first["candidate_runs_per_hour"]
        if first["candidate_runs_per_hour"]
        else 0.0
    )
    steady = last["steady_candidates_per_hour"] / first["steady_candidates_per_hour"]
    steady_runs = last["steady_runs_per_hour"] / first["steady_runs_per_hour"]
    return {
        "ratio": round(ratio, 3),
        "steady_ratio": round(steady, 3),
        "steady_runs_ratio": round(steady_runs, 3),
        "runs_ratio": round(runs_ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "goal_met": steady_runs >= GOAL_RATIO,
        "compared": f"{last['workers']} vs {first['workers']} workers",
        "trials": args.trials,
        "cpus_per_worker": args.cpus_per_worker,
        "runtime": args.runtime or "default",
        "image": image,
        "host_cpus": os.cpu_count(),
        "configs": results,
    }


def _print_table(summary: dict[str, Any]) -> None:
    configs = summary["configs"]
    print(
        f"whole-loop throughput, tiny profile, offline agent, {summary['trials']} candidates per configuration, "
        f"{summary['cpus_per_worker']} CPU(s) per worker, runtime {summary['runtime']}, image {summary['image'][:19]}"
    )
    rows = [
        ("configuration", None, ""),
        ("candidate trials/h (after baseline)", "candidates_per_hour", "{:.1f}"),
        ("candidate sandbox runs/h", "candidate_runs_per_hour", "{:.1f}"),
        ("steady candidate trials/h (no tail)", "steady_candidates_per_hour", "{:.1f}"),
        ("steady sandbox runs/h (no tail)", "steady_runs_per_hour", "{:.1f}"),
        ("all trials/h (baseline incl.)", "trials_per_hour", "{:.1f}"),
        ("TRAIN share, candidate phase", "train_share_candidates", "{:.1%}"),
        ("TRAIN share, whole run", "train_share", "{:.1%}"),
        ("candidates / scored / keeps / runs", None, ""),
        ("wall s (baseline s)", None, ""),
        ("mean run total s / eval s", None, ""),
        ("ledger verifies, results.tsv agrees", "ledger_ok", "{}"),
        ("TRAIN+EVAL had the worker's cpuset", "cpusets_ok", "{}"),
        ("load average before / after", None, ""),
    ]
    for label, key, fmt in rows:
        cells = []
        for c in configs:
            if key is not None:
                cells.append(fmt.format(c[key]))
            elif label == "configuration":
                cells.append(c.get("label", f"{c['workers']} workers"))
            elif label.startswith("candidates"):
                cells.append(f"{c['candidates']} / {c['scored']} / {c['keeps']} / {c['candidate_runs']}")
            elif label.startswith("wall"):
                cells.append(f"{c['wall_s']:.0f} ({c['baseline_s']:.0f})")
            elif label.startswith("mean"):
                cells.append(f"{c['mean_run_total_s']:.1f} / {c['mean_eval_wall_s']:.1f}")
            else:
                cells.append(f"{c['loadavg_before']:.2f} / {c['loadavg_after']:.2f}")
        print(f"{label:<38}" + "".join(f"{cell:>16}" for cell in cells))
    if "ray_vs_local" in summary:
        verdict = "meets" if summary["ray_goal_met"] else "BELOW"
        print(
            f"Ray nodes against the same number of workers on one host, steady runs/h: "
            f"{summary['ray_vs_local']:.2f}x ({verdict} the {RAY_GOAL_RATIO:.2f}x goal)"
        )
    if len(configs) < 2:
        return
    verdict = "meets" if summary["goal_met"] else "BELOW"
    print(
        f"ratio {summary['compared']}, steady state (what an overnight run gets): {summary['steady_runs_ratio']:.2f}x "
        f"sandbox runs/h ({verdict} the {summary['goal_ratio']:.1f}x goal), {summary['steady_ratio']:.2f}x "
        f"candidate trials/h as they fell; the whole finite run, tail included: {summary['runs_ratio']:.2f}x "
        f"runs/h, {summary['ratio']:.2f}x trials/h"
    )


if __name__ == "__main__":
    sys.exit(main())
