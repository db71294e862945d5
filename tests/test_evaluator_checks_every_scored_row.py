"""The evaluator checks every scored row: a leak confined to rows or positions that the graph picks by
content is rejected, and it is the full-coverage check that rejects it.

Property: every row the metric scores is cut at a secret position and run again, in its own batch and
in a shuffled one; a scored position whose target log-probability moves is a rejection. A graph that
leaks at rows or positions chosen by a hash of the tokens it sees (the lotteries of
tests/attacks/corpus/*_lottery.py) is rejected in every evaluation, while with the shadow passes
switched off the same graph is scored, better than its own honest part: the leak pays, and only the
coverage check stands in its way.
Attacks defeated: a per-position content lottery, a per-row content lottery, and a row that reads the
other rows of its batch only when a hash says so.
"""

from __future__ import annotations

import importlib.util
import math
import types
from pathlib import Path

import pytest
import torch

import prepare
from sandbox.incontainer import probes
from sandbox.incontainer.evaluate import judge, load_data, prepare_evaluation
from tests.evil_models import export

CORPUS = Path(__file__).parent / "attacks" / "corpus"
EVALUATIONS = 2  # per attack here; 20 of 20 through the real engine are in the closing note


def corpus_module(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"corpus_{name}", CORPUS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the attack's export runs only as __main__
    return module


@pytest.fixture(scope="module")
def evaluator(tiny_data: Path) -> tuple[object, dict]:
    prepared = prepare_evaluation("tiny")
    return prepared, load_data(prepared, tiny_data)


@pytest.fixture(scope="module")
def honest_report(tmp_path_factory: pytest.TempPathFactory, evaluator: tuple, table: torch.Tensor) -> dict:
    prepared, data = evaluator
    return judge(prepared, data, _honest(tmp_path_factory, table))


@pytest.fixture(scope="module")
def table(tiny_data: Path) -> torch.Tensor:
    return corpus_module("position_lottery").bigram_logprobs(str(tiny_data))


# Rates high enough that the secret val split (drawn afresh per prepared folder) always holds chosen
# rows, and that a miss (at most exp(-2 * f * 256) per evaluation, 4e-5 at f = 2%) never flakes CI.
LOTTERIES = [
    ("position_lottery", "PositionLottery", 0.02),
    ("position_lottery", "PositionLottery", 0.05),
    ("row_lottery", "RowLottery", 0.04),
    ("row_lottery", "RowLottery", 0.10),
    ("cross_row_lottery", "CrossRowLottery", 0.05),
]


def _artifact(
    tmp_path_factory: pytest.TempPathFactory, table: torch.Tensor, name: str, cls: str, rate: float
) -> Path:
    out = tmp_path_factory.getbasetemp() / f"lottery_{cls}_{rate}"
    if not (out / "model.pt2").exists():
        export(getattr(corpus_module(name), cls)(table, rate), out)
    return out


def _honest(tmp_path_factory: pytest.TempPathFactory, table: torch.Tensor) -> Path:
    out = tmp_path_factory.getbasetemp() / "lottery_honest_bigram"
    if not (out / "model.pt2").exists():
        export(corpus_module("position_lottery").PositionLottery(table, 0.0), out)  # rate 0: never peeks
    return out


@pytest.mark.parametrize(("name", "cls", "rate"), LOTTERIES)
def test_content_chosen_leaks_are_rejected_in_every_evaluation(
    tmp_path_factory: pytest.TempPathFactory,
    evaluator: tuple,
    table: torch.Tensor,
    name: str,
    cls: str,
    rate: float,
) -> None:
    prepared, data = evaluator
    artifact_dir = _artifact(tmp_path_factory, table, name, cls, rate)
    for _ in range(EVALUATIONS):
        report = judge(prepared, data, artifact_dir)
        assert report["status"] == "rejected" and report["val_bpb"] is None, report["reason"]
        assert report["check"] in ("probe:causality", "probe:row_independence"), report["reason"]
        assert report["probes"]["determinism"]["passed"] and report["probes"]["row_alone"]["passed"]


@pytest.mark.parametrize(("name", "cls", "rate"), LOTTERIES)
def test_the_same_leaks_score_when_the_coverage_check_is_switched_off(
    tmp_path_factory: pytest.TempPathFactory,
    evaluator: tuple,
    table: torch.Tensor,
    honest_report: dict,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    cls: str,
    rate: float,
) -> None:
    prepared, data = evaluator
    honest = honest_report
    assert honest["status"] == "ok", honest["reason"]  # the bigram part alone passes every check
    monkeypatch.setattr(probes, "run_coverage", lambda *a, **k: ({"causality": 0.0, "rows": 0.0}, None))
    # What is left is sampled: `row_alone` runs ONE secret row alone, so a cross-row lottery firing on a
    # fraction `rate` of rows is caught by it with probability ~rate per evaluation (seen: 2 in ~6 runs
    # of the suite). Up to three evaluations, each with fresh secrets: all three caught ~ rate**3.
    for _ in range(3):
        report = judge(prepared, data, _artifact(tmp_path_factory, table, name, cls, rate))
        if report["status"] == "ok":
            break
        assert report["check"] == "probe:row_alone", report["reason"]  # the only other sampled check
    assert report["status"] == "ok", report["reason"]  # scored: nothing but chance catches it
    assert report["val_bpb"] < honest["val_bpb"] < report["unigram_bpb"]  # and the leak pays


def test_the_honest_part_scores_the_same_with_the_checks_as_without(
    tmp_path_factory: pytest.TempPathFactory, evaluator: tuple, table: torch.Tensor, honest_report: dict
) -> None:
    """The checks never change a score: val_bpb is the frozen metric on the scoring pass's logits."""
    _, data = evaluator
    artifact_dir = _honest(tmp_path_factory, table)
    report = honest_report
    model = torch.export.load(artifact_dir / "model.pt2").module()
    with torch.no_grad():
        direct = prepare.evaluate_bpb(
            model, data["rows"], data["token_bytes"], prepare.PROFILES["tiny"].eval_batch_size
        )
    assert report["val_bpb"] == direct.val_bpb
    assert (
        report["probe_deviation_nats"]["causality"] == 0.0 and report["probe_deviation_nats"]["rows"] == 0.0
    )
    plan = report["probe_plan"]
    assert [p["name"] for p in plan["passes"]] == ["causality", "rows"]
    for p in plan["passes"]:  # every scored row, once per pass, each with a cut
        assert sorted(p["order"]) == list(range(report["eval_rows"]))
        assert len(p["cuts"]) == report["eval_rows"]


# --- the checks on hand-written functions (no export, milliseconds) ---

N, B, T, V = 24, 8, 16, 32
TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0))


def causal(x: torch.Tensor) -> torch.Tensor:
    h = TABLE[x].cumsum(dim=1)
    return h / torch.arange(1, x.shape[1] + 1)[None, :, None]


def _rows() -> torch.Tensor:
    return torch.randint(0, V, (N, T + 1), generator=torch.Generator().manual_seed(1))


def _coverage(fn: probes.LogitsFn, plan: probes.ProbePlan | None = None) -> dict[str, probes.ProbeResult]:
    rows = _rows()
    plan = plan or probes.draw_plan(N, B, T)
    recorder = probes.TargetRecorder(fn, rows, B)
    for i in range(0, N, B):
        recorder(rows[i : i + B, :-1])
    worst, failure = probes.run_coverage(fn, rows, recorder.logprobs, plan, V)
    return probes.coverage_results(worst, failure, plan)


def test_an_honest_function_passes_both_passes_with_zero_deviation() -> None:
    results = _coverage(causal)
    assert set(results) == {"causality", "row_independence"} and all(r.passed for r in results.values())


def test_a_one_step_leak_at_a_single_position_is_caught_when_any_row_is_cut_there() -> None:
    def leak_at_5(x: torch.Tensor) -> torch.Tensor:
        out = causal(x)
        out[:, 5] += 5 * TABLE[x[:, 6]]
        return out

    plan = probes.draw_plan(N, B, T)
    cuts = [9] * N
    cuts[17] = 5  # one row of 24, in one pass
    first = probes.PassPlan(**{**vars(plan.passes[0]), "cuts": cuts})
    second = probes.PassPlan(**{**vars(plan.passes[1]), "cuts": [9] * N})
    plan = probes.ProbePlan(**{**vars(plan), "passes": [first, second]})
    results = _coverage(leak_at_5, plan)
    assert not results["causality"].passed and "row 17, position 5" in results["causality"].detail
    cuts[17] = 9  # no cut on the leaking position: nothing to see (the bound's premise)
    plan = probes.ProbePlan(
        **{**vars(plan), "passes": [probes.PassPlan(**{**vars(first), "cuts": cuts}), second]}
    )
    assert all(r.passed for r in _coverage(leak_at_5, plan).values())


def test_a_batch_statistic_fails_row_independence_not_causality() -> None:
    def batch_mean_of_first_token(x: torch.Tensor) -> torch.Tensor:
        out = causal(x)
        return out + TABLE[x[:, :1]].mean(dim=0, keepdim=True)  # position 0 precedes every cut

    results = _coverage(batch_mean_of_first_token)
    assert results["causality"].passed and not results["row_independence"].passed


def test_the_first_replaced_token_always_differs() -> None:
    rows = torch.zeros(N, T + 1, dtype=torch.int64)  # every donor and most random tokens would match
    plan = probes.draw_plan(N, B, T)
    gen = torch.Generator().manual_seed(0)
    for pp in plan.passes:
        for ids, shadow, keep in probes._shadow_batches(rows, pp, B, 2, gen):
            at = torch.tensor([pp.cuts[int(i)] + 1 for i in ids])
            assert (shadow[torch.arange(len(ids)), at] != 0).all()
            assert torch.equal(shadow[keep], rows[ids, :-1][keep])


def test_nan_under_perturbation_counts_as_an_infinite_deviation() -> None:
    reference = _rows()

    def nan_unless_scored(x: torch.Tensor) -> torch.Tensor:
        scored = any(torch.equal(x, reference[i : i + B, :-1]) for i in range(0, N, B))
        return causal(x) if scored else causal(x) * math.nan

    results = _coverage(nan_unless_scored)
    assert not results["causality"].passed and "inf nats" in results["causality"].detail


def test_plans_are_fresh_secret_and_cover_every_row() -> None:
    plans = [probes.draw_plan(100, B, T) for _ in range(5)]
    assert len({p.seed for p in plans}) == 5
    assert len({tuple(p.passes[0].cuts) for p in plans}) == 5
    for p in plans:
        assert p.check_batch % B == 0 and 0 <= p.alone_row < B
        assert p.passes[0].order == list(range(100))  # the causality pass keeps the scoring batches
        assert sorted(p.passes[1].order) == list(range(100)) and p.passes[1].order != list(range(100))
        for pp in p.passes:
            assert all(0 <= c <= T - 2 for c in pp.cuts)
            assert all(d != r for r, d in enumerate(pp.donors))


def test_the_run_canary_is_a_lottery_the_coverage_catches_and_nothing_else_would(
    tmp_path_factory: pytest.TempPathFactory, evaluator: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary every run executes is the sparse lottery: rejected by the causality pass, and scored
    (status ok) the moment that pass is gone, so a run whose coverage broke stops at its next canary."""
    from harness import canary, canary_train

    prepared, data = evaluator
    out = tmp_path_factory.getbasetemp() / "canary_lottery"
    export(canary_train.lottery(cheat=True), out)
    report = judge(prepared, data, out)
    assert report["status"] == "rejected" and report["check"] == canary.EXPECTED_CHECK, report["reason"]
    assert report["probes"]["determinism"]["passed"] and report["probes"]["row_alone"]["passed"]
    monkeypatch.setattr(probes, "run_coverage", lambda *a, **k: ({"causality": 0.0, "rows": 0.0}, None))
    assert judge(prepared, data, out)["status"] == "ok"


def test_a_one_off_glitch_of_one_call_is_retried_away_but_a_varying_graph_is_not() -> None:
    """CPU kernels very rarely return a call's numerics slightly off (seen once: 1.2e-3 nats on the first
    call of an honest train.py). One odd call of three is a glitch, not a property of the graph: it is
    retried away and recorded; a graph whose answers keep moving still fails."""
    calls: list[int] = []

    def glitch_on(which: set[int]) -> probes.LogitsFn:
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return causal(x) + (1e-2 if len(calls) in which else 0.0) * TABLE[x]

        return fn

    x, plan = _rows()[:B, :-1], probes.draw_plan(N, B, T)
    for odd in (1, 2):  # the first call (its logits are then not used for scoring) or the second
        calls.clear()
        results, measured, logits = probes.check_batch(glitch_on({odd}), x, plan, EPS32)
        assert results["determinism"].passed and measured["determinism_retried"] > 1e-3
        assert logits is not None and torch.equal(logits, causal(x))  # never the glitched call's logits

    def varying(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return causal(x) + 1e-2 * len(calls) * TABLE[x]

    assert not probes.check_batch(varying, x, plan, EPS32)[0]["determinism"].passed

    calls.clear()
    fn = glitch_on({N // B + 2})  # the 2nd shadow call of the first pass: one batch, once
    assert all(r.passed for r in _coverage(fn).values())


EPS32 = torch.finfo(torch.float32).eps
