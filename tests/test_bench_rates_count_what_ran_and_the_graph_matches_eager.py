"""The benchmarks measure what they say: steady-state rates count trials by the time they ran inside the
window, and the evaluator benchmark runs end to end with the graph computing what eager computes.

Property: `bench/throughput.py`'s steady-state window counts each trial for the fraction of its span
inside the window (a trial cut by an edge counts in part, never all or nothing), and its runs with it;
`bench/eval_throughput.py` exports the baseline model, loads it the way the evaluator does and gets
logits identical to eager PyTorch. The benchmarks are not run in CI otherwise (they take minutes), so
this keeps them from rotting unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steady_window_counts_trials_by_the_share_of_their_span_inside_it() -> None:
    in_window = _bench("throughput").in_window
    # two workers, 10 s trials back to back; worker B's third trial was confirmed (2 runs)
    spans = [(0, 10, 1), (10, 20, 1), (20, 30, 1), (0, 10, 1), (10, 20, 1), (20, 30, 2)]
    assert in_window(spans, 0, 30) == (6.0, 7.0)
    # a trial cut by the window's end counts for the half that ran inside it, its runs with it
    trials, runs = in_window([*spans, (25, 35, 2)], 0, 30)
    assert (trials, runs) == (6.5, 8.0)
    # cut at the start too; nothing outside the window counts
    trials, runs = in_window([(0, 10, 1), (10, 20, 1), (30, 40, 1)], 5, 20)
    assert (trials, runs) == (1.5, 1.5)


def test_eval_throughput_bench_runs_and_the_loaded_graph_matches_eager(tiny_data: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "eval_throughput.py"),
            *("--batches", "1", "--device", "cpu", "--data", str(tiny_data), "--json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_abs_logit_diff"] == 0.0, result
    assert result["functionalized"] is False  # the baseline's graph takes the evaluator's short path
    assert result["tokens_per_s_graph"] > 0 and result["tokens_per_s_eager"] > 0 and result["ratio"] > 0
