"""Three workers sharing one run folder leave records that agree with each other, as one worker's do:
the ledger verifies, results.tsv holds exactly its rows in its order, every trial folder has one
row, every candidate was judged against the best recorded just before it landed, the branch is at
the last keep, `max_trials` is met exactly (never overshot by the trials in flight), the baseline
runs are spread over the workers, and the run canary runs on whichever worker is free, one at a time.

The fake sandbox holds each trial for a short, seed-dependent time, so trials finish out of order.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.loop import ResearchLoop
from sandbox.constants import Decision
from sandbox.verdict import TrialSpec
from tests.test_canary_runs_after_the_baseline_and_every_n_candidates import CanarySandbox
from tests.test_loop_fakes_honour_the_protocols import Sleeps, jitter
from tests.workers_fakes import RecordingSandbox, assert_records_agree, leases_for, scored, workers_config

SCORES = (0.97, 1.2, 0.95, 0.99, 1.4, 0.93, 0.96, 0.91, 1.1, 0.92, 0.98, 0.9)


def test_three_workers_twelve_candidates(tmp_path: Path) -> None:
    config = workers_config(
        tmp_path,
        3,
        max_trials=len(SCORES),
        canary_interval=4,
        judge=workers_config(tmp_path, 3).judge.model_copy(update={"baseline_repeats": 3}),
    )
    canaries: list[str] = []

    def gate(spec: TrialSpec) -> None:
        if "canary" in spec.candidate.read_text(encoding="utf-8")[:400].lower():
            canaries.append(spec.trial_id)
        time.sleep(0.01 + 0.02 * abs(jitter(spec.seed)))  # out-of-order finishes

    sandbox = RecordingSandbox(gate, inner=CanarySandbox(noise=0.002))
    agent = scored(*SCORES)
    leases = leases_for(tmp_path, 3)
    summary = ResearchLoop(config, sandbox, agent, sleep=Sleeps(), leases=leases).run()

    assert summary.stopped.startswith(f"max_trials reached: {len(SCORES)}"), summary.stopped
    assert sandbox.clashes == [] and leases.holders() == {}
    records = assert_records_agree(config)
    candidates = [r for r in records if r.kind == "candidate"]
    assert sorted(r.description for r in candidates) == sorted(f"score {s}" for s in SCORES)
    assert len({r.candidate_commit for r in candidates}) == len(SCORES)

    baselines = [r for r in records if r.kind == "baseline"]
    assert len(baselines) == 3 and all(r.decision is Decision.BASELINE for r in baselines)
    assert len({r.worker for r in baselines}) >= 2, "the baseline runs are spread over the workers"
    first_candidate = min(r.started_at for r in candidates)
    assert all(r.finished_at <= first_candidate for r in baselines), "no candidate before the baseline"

    canary_rows = [r for r in records if r.kind == "canary"]
    assert canary_rows and all(r.canary is not None and r.canary.passed for r in canary_rows)
    assert len(canary_rows) == len(canaries)
    for a in canary_rows:  # one canary at a time
        for b in canary_rows:
            if a is not b:
                assert a.finished_at <= b.started_at or b.finished_at <= a.started_at
    assert len({r.worker for r in records}) == 3
