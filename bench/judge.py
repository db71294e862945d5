"""Measure the judge: its false-keep rate on no-op candidates and its power on a planted improvement.

    python bench/judge.py [--noops 10] [--gains 10] [--worse MATRIX_LR=0.02] [--baseline-repeats 3]
                          [--pairs 2] [--false-keep-rate 0.05] [--noise-k 1.0] [--min-compute-share 0.85]
                          [--backend docker|local|fake] [--time-budget S] [--data-dir D] [--keep DIR]
                          [--seed 0] [--json]

On the tiny profile, with the repository's train.py:
- the parent is train.py made deliberately worse (`--worse NAME=VALUE,...` rewrites hyperparameter
  globals, default `MATRIX_LR=0.02`, half the learning rate of the block matrices);
- a no-op candidate is the parent with only whitespace changed (same code, a different file);
- the planted improvement is the original train.py (the parent's parent, better by the gap the
  `--worse` edit costs).

The parent runs `--baseline-repeats` times (the baseline), then no-op and improvement candidates,
alternating (so a host that drifts touches both alike), each go through exactly what the loop does
with a candidate, using the judge's own functions (harness/judge.py): the first run is screened
against the bar; a would-be keep is confirmed on `--pairs` paired runs of it and the parent (same
seed, back to back, alternating order) and judged on the differences with the pooled noise; every
run is pooled into the noise estimate as the loop's `replay` pools it. Unlike a real run the best
never moves: every candidate is judged against the same parent, which is what makes them repeats.
A run the host starves (sandbox/compute.py) is re-run after a wait, as the loop does.

Printed (one JSON line with `--json`): the false-keep rate over the no-ops, the keep rate (power)
over the improvements, the measured gap between the original and the parent (mean difference of all
their runs, in val_bpb, in units of the pooled s, and in "noise floors" of 2 s, the old threshold),
the noise estimate, the counts of runs and starved re-runs, the wall time, and every trial. The goal
(`goal_met`): no false keep, and power >= 0.8. The gap should be about 1.5 to 2 noise floors for the
power to mean what the goal says: choose `--worse` so that it is, and say which one ran.

Takes long on the real engine: every run trains for the profile's budget (30 s) and is evaluated, and
each would-be keep costs 2 x `--pairs` more runs (10 + 10 candidates: roughly 40 to 70 runs, 30 to 50
minutes on two cores). `--backend fake` runs the same code on simulated scores in a second (tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.judge import (  # noqa: E402
    Action,
    Best,
    JudgeSettings,
    JudgeState,
    code_lines,
    judge,
    judge_paired,
)
from harness.loop import derive_seed  # noqa: E402
from sandbox.constants import Status  # noqa: E402
from sandbox.engine.backend import Sandbox  # noqa: E402
from sandbox.verdict import TrialSpec, Verdict  # noqa: E402

DEFAULT_WORSE = "MATRIX_LR=0.02"
STARVED_WAIT_S = 30.0
STARVED_ATTEMPTS = 5
POWER_GOAL = 0.8


class BenchError(Exception):
    """The bench cannot measure anything (the parent does not run, a global is missing)."""


def set_globals(source: str, values: dict[str, str]) -> str:
    """train.py with the named module globals' values replaced (their trailing comments kept)."""
    for name, value in values.items():
        pattern = re.compile(rf"^({re.escape(name)} = )([^#\n]*?)(\s*#.*)?$", re.MULTILINE)
        source, n = pattern.subn(_replacement(value), source, count=1)
        if n != 1:
            raise BenchError(f"train.py has no global {name} = ... to change")
    return source


def _replacement(value: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{m.group(1)}{value}{m.group(3) or ''}"


def whitespace_noop(source: str) -> str:
    """The same code, different bytes: a blank line before the first import, two more at the end."""
    at = re.search(r"^(import|from) ", source, re.MULTILINE)
    cut = at.start() if at else 0
    return f"{source[:cut]}\n{source[cut:].rstrip()}\n\n\n"


@dataclass(frozen=True)
class Planted:
    parent: str
    noop: str
    gain: str


def plant(train_py: str, worse: dict[str, str]) -> Planted:
    parent = set_globals(train_py, worse)
    if parent == train_py:
        raise BenchError(f"--worse {worse} changes nothing in train.py")
    noop = whitespace_noop(parent)
    if noop == parent or code_lines(noop) != code_lines(parent):
        raise BenchError("the whitespace no-op must differ in bytes only")
    return Planted(parent=parent, noop=noop, gain=train_py)


@dataclass
class Bench:
    """Runs the planted candidates through the judge's rules on one sandbox."""

    sandbox: Sandbox
    planted: Planted
    settings: JudgeSettings
    workdir: Path
    profile: str
    limits: Any
    seed: int = 0
    sleep: Callable[[float], None] = time.sleep
    runs: int = 0
    starved: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)  # every ok run by role: parent, gain, noop

    def run(self, label: str, text: str, seed: int, role: str) -> Verdict:
        folder = self.workdir / f"{self.runs:04d}-{label}"
        folder.mkdir(parents=True)
        (folder / "candidate.py").write_text(text, encoding="utf-8")
        spec = TrialSpec(
            trial_id=f"j{self.runs:04d}-{label}",
            candidate=folder / "candidate.py",
            trial_dir=folder / "run",
            profile=self.profile,
            limits=self.limits,
            seed=seed,
            min_compute_share=self.settings.min_compute_share,
        )
        for attempt in range(1, STARVED_ATTEMPTS + 1):
            self.runs += 1
            verdict = self.sandbox.run_trial(spec)
            if verdict.status is not Status.STARVED:
                break
            self.starved += 1
            print(f"  {spec.trial_id} starved ({verdict.reason}); waiting", file=sys.stderr)
            self.sleep(STARVED_WAIT_S * attempt)
            spec = spec.model_copy(update={"trial_dir": folder / f"run-after-starved-{attempt}"})
        else:
            raise BenchError(f"the host starved {STARVED_ATTEMPTS} runs of {spec.trial_id} in a row")
        if verdict.val_bpb is not None:
            self.values.setdefault(role, []).append(verdict.val_bpb)
        val = f"{verdict.val_bpb:.6f}" if verdict.val_bpb is not None else verdict.status.value
        print(f"  {spec.trial_id}: {val}", file=sys.stderr)
        return verdict

    def baseline(self) -> JudgeState:
        state = JudgeState()
        lines = code_lines(self.planted.parent)
        for i in range(self.settings.baseline_repeats):
            v = self.run(f"base{i}", self.planted.parent, derive_seed(self.seed, "baseline", i), "parent")
            if v.val_bpb is None:
                raise BenchError(f"the parent's baseline run ended {v.status.value}: {v.reason}")
            state = state.with_baseline(
                v.val_bpb, trial_id=f"b{i}", commit="parent", lines=lines, settings=self.settings
            )
        return state

    def candidate(self, state: JudgeState, k: int, kind: str) -> tuple[JudgeState, dict[str, Any]]:
        """One planted candidate through the loop's sequence; the state with its runs pooled."""
        assert state.best is not None and state.noise is not None
        text = self.planted.noop if kind == "noop" else self.planted.gain
        lines = code_lines(text)
        best: Best = state.best
        commit = f"{kind}{k}"  # a distinct commit per trial, as in a run
        first = self.run(f"{commit}", text, derive_seed(self.seed, commit, 0), kind)
        row: dict[str, Any] = {"kind": kind, "first": first.val_bpb, "pairs": [], "decision": "discard"}
        measured: list[tuple[str, float]] = []
        if first.val_bpb is None:
            row["reason"] = f"first run {first.status.value}"
            return state, row
        measured.append((commit, first.val_bpb))
        screen = judge(best, state.noise, [first.val_bpb], lines, self.settings)
        row["reason"] = screen.reason
        if screen.action is Action.CONFIRM:
            pairs: list[tuple[float, float]] = []
            for p in range(1, self.settings.confirm_pairs + 1):
                seed = derive_seed(self.seed, commit, p)
                order = ("cand", "best") if p % 2 else ("best", "cand")
                got: dict[str, float | None] = {}
                for who in order:
                    source, role = (text, kind) if who == "cand" else (self.planted.parent, "parent")
                    v = self.run(f"{commit}-{who}{p}", source, seed, role)
                    got[who] = v.val_bpb
                    if v.val_bpb is not None:
                        measured.append((commit if who == "cand" else "parent", v.val_bpb))
                mine, theirs = got["cand"], got["best"]
                if mine is None or theirs is None:
                    row["reason"] = f"not confirmed: a paired run did not score (pair {p})"
                    break
                pairs.append((mine, theirs))
            else:
                verdict = judge_paired(best, state.noise, first.val_bpb, pairs, lines, self.settings)
                row["decision"], row["reason"] = verdict.decision.value, verdict.reason
                row["mean_diff"], row["paired_threshold"] = verdict.mean_diff, verdict.paired_threshold
            row["pairs"] = pairs
        else:
            row["decision"] = screen.decision.value
        return state.with_measurements(measured, self.settings), row


def measure(bench: Bench, noops: int, gains: int) -> dict[str, Any]:
    """The whole measurement: baseline, then the planted candidates alternating; the JSON summary."""
    t0 = time.monotonic()
    state = bench.baseline()
    order: list[str] = []
    for i in range(max(noops, gains)):  # alternating, so that a drifting host touches both kinds alike
        order += (["noop"] if i < noops else []) + (["gain"] if i < gains else [])
    trials: list[dict[str, Any]] = []
    counts = {"noop": 0, "gain": 0}
    for kind in order:
        state, row = bench.candidate(state, counts[kind], kind)
        counts[kind] += 1
        trials.append(row)
        print(f"  -> {kind} {counts[kind]}: {row['decision']} ({row['reason']})", file=sys.stderr)
    return summarise(bench, state, trials, wall_s=time.monotonic() - t0)


def summarise(
    bench: Bench, state: JudgeState, trials: Sequence[dict[str, Any]], *, wall_s: float
) -> dict[str, Any]:
    assert state.noise is not None
    noops = [t for t in trials if t["kind"] == "noop"]
    gains = [t for t in trials if t["kind"] == "gain"]
    false_keeps = sum(t["decision"] == "keep" for t in noops)
    keeps = sum(t["decision"] == "keep" for t in gains)
    parent, gain = bench.values.get("parent", []), bench.values.get("gain", [])
    gap = statistics.fmean(parent) - statistics.fmean(gain) if parent and gain else None
    paired = [c - b for t in gains for c, b in t["pairs"]]
    s = state.noise.std
    power = keeps / len(gains) if gains else None
    return {
        "bench": "judge",
        "profile": bench.profile,
        "backend": bench.sandbox.name,
        "settings": bench.settings.model_dump(mode="json"),
        "noops": len(noops),
        "false_keeps": false_keeps,
        "false_keep_rate": false_keeps / len(noops) if noops else None,
        "gains": len(gains),
        "keeps": keeps,
        "power": power,
        "gap": {
            "val_bpb": gap,  # parent mean - original mean over all their runs (> 0: the original is better)
            "paired_val_bpb": -statistics.fmean(paired) if paired else None,
            "in_s": gap / s if gap is not None and s else None,
            "in_noise_floors": gap / (2 * s) if gap is not None and s else None,  # the old threshold: 2 s
        },
        "noise": state.noise.model_dump(mode="json"),
        "runs": bench.runs,
        "starved_reruns": bench.starved,
        "wall_s": round(wall_s, 1),
        "goal_met": false_keeps == 0 and power is not None and power >= POWER_GOAL,
        "trials": list(trials),
    }


# --------------------------------------------------------------------------- the fake backend


class FakeScores:
    """A Sandbox with simulated scores: Gaussian noise of `sigma` per run, the improvement `gap` lower.

    What the fake decides by: the candidate's text (the parent and its no-op score `mean`, the
    original `mean - gap`), the seed (a deterministic draw), and `drift(k)` added to the k-th run.
    """

    name = "fake"

    def __init__(
        self,
        planted: Planted,
        *,
        mean: float = 1.0,
        sigma: float = 0.007,
        gap: float = 0.025,
        drift: Callable[[int], float] | None = None,
    ) -> None:
        self.means = {planted.parent: mean, planted.noop: mean, planted.gain: mean - gap}
        self.sigma, self.drift, self.calls = sigma, drift, 0

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        text = spec.candidate.read_text(encoding="utf-8")
        draw = random.Random(int(hashlib.sha256(f"{spec.seed}/{text}".encode()).hexdigest()[:12], 16))
        value = (
            self.means[text] + draw.gauss(0.0, self.sigma) + (self.drift(self.calls) if self.drift else 0.0)
        )
        self.calls += 1
        return Verdict(
            trial_id=spec.trial_id, status=Status.OK, val_bpb=value, seed=spec.seed, backend=self.name
        )


# --------------------------------------------------------------------------- command line


def parse_worse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name.strip()) or not value.strip():
            raise argparse.ArgumentTypeError(f"--worse wants NAME=VALUE[,NAME=VALUE]; got {part!r}")
        values[name.strip()] = value.strip()
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noops", type=int, default=10, help="no-op candidates (default 10)")
    parser.add_argument("--gains", type=int, default=10, help="planted improvements (default 10)")
    parser.add_argument(
        "--worse", type=parse_worse, default=parse_worse(DEFAULT_WORSE), help="the parent's edit"
    )
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=JudgeSettings().confirm_pairs, help="confirmation pairs")
    parser.add_argument("--false-keep-rate", type=float, default=JudgeSettings().false_keep_rate)
    parser.add_argument("--noise-k", type=float, default=JudgeSettings().noise_k, help="screening multiplier")
    parser.add_argument("--min-delta", type=float, default=JudgeSettings().min_delta)
    parser.add_argument("--min-compute-share", type=float, default=JudgeSettings().min_compute_share)
    parser.add_argument("--backend", choices=("docker", "local", "fake"), default="docker")
    parser.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)"
    )
    parser.add_argument("--time-budget", type=float, help="TRAIN budget, s (default: the tiny profile's)")
    parser.add_argument("--data-dir", type=Path, help="prepared tiny data (default: prepare.py's folder)")
    parser.add_argument("--train-py", type=Path, default=ROOT / "train.py", help="the original train.py")
    parser.add_argument(
        "--fake-gap", type=float, default=0.025, help="fake backend: the planted gap (val_bpb)"
    )
    parser.add_argument("--fake-sigma", type=float, default=0.007, help="fake backend: run-to-run sigma")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the trial folders under DIR (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line, last")
    return parser


def main(argv: list[str] | None = None, *, sleep: Callable[[float], None] = time.sleep) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = JudgeSettings(
        baseline_repeats=args.baseline_repeats,
        noise_k=args.noise_k,
        min_delta=args.min_delta,
        confirm_pairs=args.pairs,
        false_keep_rate=args.false_keep_rate,
        min_compute_share=args.min_compute_share,
    )
    planted = plant(args.train_py.read_text(encoding="utf-8"), args.worse)
    from sandbox.engine.limits import Limits

    sandbox: Sandbox
    if args.backend == "fake":
        sandbox = FakeScores(planted, sigma=args.fake_sigma, gap=args.fake_gap)
        limits = Limits(time_budget_s=30, kill_grace_s=5)
    else:
        overrides: dict[str, Any] = {}
        if args.time_budget is not None:
            overrides["time_budget_s"] = args.time_budget
        if args.runtime is not None:
            overrides["runtime"] = args.runtime
        limits = Limits.for_profile("tiny", **overrides)
        if args.backend == "local":
            from sandbox.engine.local import LocalSandbox

            sandbox = LocalSandbox(data_dir=args.data_dir)
        else:
            from sandbox.engine.docker import DockerSandbox

            sandbox = DockerSandbox(data_dir=args.data_dir)
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        workdir = args.keep or Path(tmp)
        bench = Bench(sandbox, planted, settings, workdir, "tiny", limits, seed=args.seed, sleep=sleep)
        summary = measure(bench, args.noops, args.gains)
    summary["worse"] = args.worse
    gap = summary["gap"]
    print(
        f"false keeps {summary['false_keeps']}/{summary['noops']}, power {summary['keeps']}/{summary['gains']}, "
        f"gap {gap['val_bpb']} val_bpb = {gap['in_noise_floors']} noise floors (2 s), "
        f"{summary['runs']} runs ({summary['starved_reruns']} starved re-runs) in {summary['wall_s']} s",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
