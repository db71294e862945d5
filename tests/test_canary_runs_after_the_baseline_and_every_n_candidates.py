"""The run canary, a known cheat, runs through the same sandbox as every candidate: once right after
the baseline, then every `canary_interval` candidate trials, and once more before the run stops at
`max_trials`. Its rows are controls: decision `canary`, never best, never counted towards
`max_trials`, not in results.tsv, never shown to the agent; `canary_interval = 0` runs none and the
banner warns.

Property: a sandbox or evaluator that stops rejecting cheats during a night is noticed within
`canary_interval` candidates, and the control never pollutes the experiment's records.
Attack defeated: a drifted configuration (a val/ mount, a network, broken probes) that the CI-time
isolation tests cannot see, because it happened on the machine the run uses.

The other canary tests import `CanarySandbox` from here: a FakeSandbox that answers the canary's
source with a chosen outcome (the real one is tests/test_canary_is_rejected_only_while_isolation_holds.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from harness import canary
from harness.judge import replay
from harness.loop import ResearchLoop
from harness.records.chain import Ledger, verify
from harness.records.results import ResultsFile, format_row, rows_for
from harness.records.schemas import TrialPlan, TrialRecord
from sandbox.constants import TRAIN_LOG_FILE, Decision, Status
from sandbox.engine import trialdir
from sandbox.verdict import TrialSpec, Verdict
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, Sleeps, run_config
from tests.test_loop_resume_loses_and_duplicates_nothing import improving

# What the fake returns for the canary: the outcome a working sandbox gives, and the broken ones.
REJECTED = "rejected"  # by probe:causality: the canary passes
SCORED = "ok"  # the cheat scored: isolation or evaluator broken
OTHER_CHECK = "other_check"  # rejected, but not by the causality probe: the control shows nothing
CRASHED = "crash"


class CanarySandbox(FakeSandbox):
    """FakeSandbox, except that the canary's source gets `outcomes[i]` (the last one repeats)."""

    def __init__(self, *outcomes: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.outcomes = list(outcomes) or [REJECTED]
        self.canary_calls: list[TrialSpec] = []

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        if spec.candidate.read_text(encoding="utf-8") != canary.source_text():
            return super().run_trial(spec)
        self.calls.append(spec)
        if self.on_run is not None:
            self.on_run(spec)
        self.canary_calls.append(spec)
        outcome = self.outcomes[min(len(self.canary_calls), len(self.outcomes)) - 1]
        spec.trial_dir.mkdir(parents=True, exist_ok=True)
        escaped = ["/data/val/shard_00000.npy"] if outcome == SCORED else []
        seen = {"val_read": escaped, "network": []}
        log = (
            "CANARY " + json.dumps({"escaped": sorted(k for k, v in seen.items() if v), "seen": seen}) + "\n"
        ).encode()
        (spec.trial_dir / TRAIN_LOG_FILE).write_bytes(log)
        outcomes: dict[str, tuple[Status, float | None, dict[str, Any] | None]] = {
            REJECTED: (Status.REJECTED, None, {"status": "rejected", "check": "probe:causality"}),
            SCORED: (Status.OK, 0.0123, {"status": "ok", "check": None, "val_bpb": 0.0123}),
            OTHER_CHECK: (Status.REJECTED, None, {"status": "rejected", "check": "artifact:op_not_allowed"}),
            CRASHED: (Status.CRASH, None, None),
        }
        status, val, report = outcomes[outcome]
        return trialdir.finish(
            spec,
            backend=self.name,
            status=status,
            val_bpb=val,
            reason=f"the fake sandbox says {outcome}",
            train_log=log,
            timings={"total_s": 0.01},
            peak_memory_bytes=1,
            images={"trainer": "sha256:" + "f" * 64},
            logs={"train": spec.trial_dir / TRAIN_LOG_FILE},
            report=report,
        )


def kinds(records: Sequence[TrialRecord]) -> str:
    return "".join({"baseline": "b", "candidate": "c", "canary": "K"}[r.kind] for r in records)


def assert_records_agree(run_dir: Path) -> list[TrialRecord]:
    """Ledger verifies, ids unique, results.tsv is exactly the ledger's experiment rows."""
    check = verify(run_dir)
    assert check.ok, check.bad
    records = Ledger(run_dir / "ledger.jsonl").records()
    ids = [r.trial_id for r in records]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    tsv = ResultsFile(run_dir / "results.tsv").read()
    assert [format_row(r) for r in tsv] == [format_row(r) for r in rows_for(records)]
    assert len(tsv) == sum(1 for r in records if r.kind != "canary")
    return records


def test_cadence_after_baseline_every_n_and_before_stopping(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=5, canary_interval=2)
    sandbox, agent = CanarySandbox(), ScriptedAgent(improving(5))
    summary = ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    assert summary.stopped.startswith("max_trials reached: 5 candidate trials of 5")
    records = assert_records_agree(config.run_dir)
    # baseline x2, canary, 2 candidates, canary, 2 candidates, canary, 1 candidate, closing canary
    assert kinds(records) == "bbKccKccKcK"
    canaries = [r for r in records if r.kind == "canary"]
    assert len(sandbox.canary_calls) == len(canaries) == 4
    for r in canaries:
        assert r.decision is Decision.CANARY and r.status is Status.REJECTED and r.val_bpb is None
        assert r.canary is not None and r.canary.passed and r.canary.got == "rejected by probe:causality"
        assert r.canary.source_sha256 == canary.source_sha256()
        assert r.candidate_commit is None and r.parent_commit is None  # its source is no git commit
    # The same sandbox, limits and profile as every candidate.
    candidate_specs = [s for s in sandbox.calls if s not in sandbox.canary_calls]
    assert {s.limits for s in sandbox.canary_calls} == {candidate_specs[0].limits}
    assert {s.profile for s in sandbox.canary_calls} == {"tiny"}


def test_canary_rows_are_never_best_never_counted_never_shown_to_the_agent(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=3, canary_interval=1)
    sandbox = CanarySandbox()
    agent = ScriptedAgent(improving(3))
    ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert sum(1 for r in records if r.kind == "candidate") == 3  # max_trials counts candidates only
    assert kinds(records) == "bbKcKcKcK"
    canary_ids = {r.trial_id for r in records if r.kind == "canary"}
    for i in range(1, len(records) + 1):  # at no point does a canary become best
        state = replay((r.judged() for r in records[:i]), config.judge)
        assert state.best is None or state.best.trial_id not in canary_ids
    assert len(agent.calls) == 3
    for ctx in agent.calls:
        assert not {h.trial_id for h in ctx.history} & canary_ids
        assert ctx.last is not None and ctx.last.trial_id not in canary_ids
    assert [ctx.trial_index for ctx in agent.calls] == [0, 1, 2]
    assert "canary" not in (config.run_dir / "results.tsv").read_text()


def test_a_failed_canary_row_keeps_its_score_out_of_the_judgement(tmp_path: Path) -> None:
    """Even a canary that scored far below everything never moves the best."""
    config = run_config(tmp_path, max_trials=0, canary_interval=1)
    with pytest.raises(Exception, match="ISOLATION BROKEN"):
        ResearchLoop(config, CanarySandbox(SCORED), ScriptedAgent(), sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert records[-1].kind == "canary" and records[-1].val_bpb == pytest.approx(0.0123)
    state = replay((r.judged() for r in records), config.judge)
    assert state.best is not None and state.best.val_bpb == pytest.approx(1.0)


class Recording:
    """A Progress that keeps the banner."""

    def __init__(self) -> None:
        self.banner: list[str] = []

    def start(self, banner: Sequence[str]) -> None:
        self.banner = list(banner)

    def phase(self, trial_id: str, text: str) -> None:
        return None

    def recorded(self, record: object, state: object) -> None:
        return None

    def stop(self) -> None:
        return None


def test_interval_zero_runs_no_canary_and_the_banner_warns(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=2, canary_interval=0)
    sandbox, progress = CanarySandbox(), Recording()
    ResearchLoop(config, sandbox, ScriptedAgent(improving(2)), progress=progress, sleep=Sleeps()).run()
    assert kinds(assert_records_agree(config.run_dir)) == "bbcc"
    assert sandbox.canary_calls == []
    assert any("WARNING: canary OFF" in line for line in progress.banner)

    on = run_config(tmp_path / "on", max_trials=0, canary_interval=10)
    progress = Recording()
    ResearchLoop(on, CanarySandbox(), ScriptedAgent(), progress=progress, sleep=Sleeps()).run()
    assert any("every 10 candidate trials" in line for line in progress.banner)
    assert not any("WARNING" in line for line in progress.banner)


def _row(kind: str, passed: bool | None = None) -> TrialRecord:
    check = None
    if kind == "canary":
        check = {"passed": passed, "expected": canary.EXPECTED, "got": "x", "source_sha256": "0" * 64}
    return TrialRecord.model_validate(
        {
            "trial_id": "t0000",
            "kind": kind,
            "worker": "w",
            "parent_commit": None,
            "candidate_commit": None if kind == "canary" else "c",
            "status": "ok",
            "decision": {"baseline": "baseline", "candidate": "discard", "canary": "canary"}[kind],
            "reason": "",
            "description": "",
            "val_bpb": None,
            "code_lines": 1,
            "started_at": "",
            "finished_at": "",
            "canary": check,
        }
    )


B, C_, K_OK, K_FAIL = _row("baseline"), _row("candidate"), _row("canary", True), _row("canary", False)


def test_the_canary_source_hash_has_its_own_field_and_old_rows_still_read() -> None:
    digest = canary.source_sha256()
    old_row = K_OK.model_dump(mode="json") | {"candidate_commit": f"sha256:{digest}"}
    assert TrialRecord.model_validate(old_row).candidate_commit is None  # written before the field existed
    old_plan = {
        "trial_id": "t0002",
        "kind": "canary",
        "parent_commit": None,
        "candidate_commit": f"sha256:{digest}",
        "description": "canary 1",
        "seeds": [1, 2],
        "code_lines": 1,
        "created_at": "",
        "worker": "w",
    }
    plan = TrialPlan.model_validate(old_plan)
    assert plan.candidate_commit is None and plan.source_sha256 == digest
    with pytest.raises(
        ValidationError, match="candidate_commit"
    ):  # a commit is a candidate's, never a canary's
        TrialRecord.model_validate(K_OK.model_dump(mode="json") | {"candidate_commit": "c"})
    with pytest.raises(ValidationError, match="candidate_commit"):
        TrialRecord.model_validate(C_.model_dump(mode="json") | {"candidate_commit": None})


@pytest.mark.parametrize(
    ("rows", "interval", "max_trials", "expected"),
    [
        ([B, B], 10, None, True),  # right after the baseline
        ([B, B, K_OK], 10, None, False),
        ([B, B, K_OK, *[C_] * 9], 10, None, False),
        ([B, B, K_OK, *[C_] * 10], 10, None, True),  # every 10 candidates
        ([B, B, K_OK, *[C_] * 3], 10, 3, True),  # the closing canary before max_trials stops the run
        ([B, B, K_OK, *[C_] * 3, K_OK], 10, 3, False),  # ... only once
        ([B, B, K_OK], 10, 0, False),  # nothing ran since the last canary
        ([B, B, K_FAIL], 10, None, True),  # a failed canary is re-run first on the next start
        ([B, B, K_FAIL, *[C_] * 2], 10, None, True),
        ([B, B, *[C_] * 4], 10, None, True),  # a run that started without canaries gets one at once
        ([B, B], 0, None, False),  # off
        ([B, B, K_FAIL], 0, None, False),
    ],
)
def test_due_is_decided_from_the_ledger(
    rows: list[TrialRecord], interval: int, max_trials: int | None, expected: bool
) -> None:
    assert canary.due(rows, interval, max_trials) is expected
