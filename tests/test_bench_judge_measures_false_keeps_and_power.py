"""`bench/judge.py` measures what it says: its no-op candidates are the parent's code byte-for-byte
different but token-for-token the same, its planted improvement is the original train.py, and the
numbers it prints (false-keep rate, power, the gap, the wall time) come from running every candidate
through the judge's own rules. Run here on simulated scores (`--backend fake`), including a host that
speeds up after the baseline, which must not produce a false keep; the real measurement needs the
engine and is the lead's to run (`python bench/judge.py --json`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from harness.judge import JudgeSettings, code_lines
from sandbox.engine.limits import Limits

REPO = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_judge", REPO / "bench" / "judge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_judge"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


bench = _bench()


def test_planted_candidates_are_what_they_claim() -> None:
    original = (REPO / "train.py").read_text(encoding="utf-8")
    planted = bench.plant(original, {"MATRIX_LR": "0.02"})
    assert planted.gain == original
    changed = [
        (a, b) for a, b in zip(original.splitlines(), planted.parent.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and changed[0][1].startswith("MATRIX_LR = 0.02  #")  # the comment is kept
    assert planted.noop != planted.parent
    assert ast.dump(ast.parse(planted.noop)) == ast.dump(ast.parse(planted.parent))  # the same code
    assert code_lines(planted.noop) == code_lines(planted.parent)
    with pytest.raises(bench.BenchError, match="NO_SUCH"):
        bench.plant(original, {"NO_SUCH": "1"})


def test_the_fake_run_prints_false_keeps_power_gap_and_wall_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bench.main(["--backend", "fake", "--noops", "10", "--gains", "10", "--json"], sleep=lambda s: None)
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["noops"] == summary["gains"] == 10 and len(summary["trials"]) == 20
    assert [t["kind"] for t in summary["trials"][:4]] == ["noop", "gain", "noop", "gain"]
    assert summary["false_keep_rate"] == summary["false_keeps"] / 10
    assert summary["power"] == summary["keeps"] / 10
    assert summary["false_keeps"] == 0 and summary["power"] >= 0.8 and summary["goal_met"]
    assert summary["gap"]["val_bpb"] == pytest.approx(0.025, abs=0.01)  # the fake's planted gap
    assert 1.0 < summary["gap"]["in_noise_floors"] < 3.0
    assert summary["noise"]["runs"] == summary["runs"]  # every run was pooled
    assert summary["wall_s"] >= 0 and summary["backend"] == "fake"
    confirmed = [t for t in summary["trials"] if t["pairs"]]
    assert confirmed and all(len(t["pairs"]) == 2 for t in confirmed)


def test_a_host_that_speeds_up_after_the_baseline_makes_no_false_keep(tmp_path: Path) -> None:
    original = (REPO / "train.py").read_text(encoding="utf-8")
    planted = bench.plant(original, {"MATRIX_LR": "0.02"})
    settings = JudgeSettings()
    # Three baseline runs at full cost, then every run 0.03 (about 4 sigma) faster: every no-op's
    # first run beats the bar, and only the paired confirmation can tell.
    fake = bench.FakeScores(planted, sigma=0.007, gap=0.025, drift=lambda k: 0.0 if k < 3 else -0.03)
    limits = Limits(time_budget_s=30, kill_grace_s=5)
    b = bench.Bench(fake, planted, settings, tmp_path, "tiny", limits, sleep=lambda s: None)
    summary = bench.measure(b, 10, 0)
    assert summary["false_keeps"] == 0
    confirmed = [t for t in summary["trials"] if t["pairs"]]
    assert len(confirmed) >= 8  # the drift fooled the screen, not the judge
