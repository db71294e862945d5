"""The whole loop works for real, end to end, without an engine: the repository's train.py trains on
the tiny profile through LocalSandbox, the trusted evaluator scores it, the OfflineAgent proposes
an edit, and every record (ledger, results.tsv, lineage, trial folders, report) comes out right.

Marked slow: two real trainings of the tiny profile's 30 s budget each. The docker-backed version
of the same path is `harness run` itself, wired by the lead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.agents import make_agent
from harness.agents.config import AgentSettings
from harness.config import RunConfig
from harness.judge import JudgeSettings
from harness.loop import ResearchLoop
from harness.records.chain import Ledger, verify
from harness.records.results import ResultsFile
from harness.report import write_report
from sandbox.constants import Decision, Status
from sandbox.engine.limits import Limits
from sandbox.engine.local import LocalSandbox

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_two_real_trials_on_the_tiny_profile(tmp_path: Path, tiny_data: Path) -> None:
    program = tmp_path / "program.md"
    program.write_text("Lower val_bpb by editing the hyperparameters of train.py.\n", encoding="utf-8")
    config = RunConfig(
        run_dir=tmp_path / "run",
        run_tag="tiny-offline",
        profile="tiny",
        agent="offline",
        backend="local",
        program=program,
        train_py=REPO / "train.py",
        # train.py stops itself at the profile's 30 s budget; the controller's clock gets headroom so a
        # loaded CI machine (slow start-up, slow export) tests the loop, not the machine's speed.
        limits=Limits.for_profile("tiny", time_budget_s=120, kill_grace_s=60),
        # This tests the loop, not the host: a shared CI machine may starve these runs, which would
        # (rightly) pause the run; the starved rule has its own tests. The share is still recorded.
        judge=JudgeSettings(baseline_repeats=1, confirm_keeps=False, min_compute_share=0.0),
        max_trials=1,
    )
    agent = make_agent("offline", AgentSettings(kind="offline"))
    summary = ResearchLoop(config, LocalSandbox(data_dir=tiny_data), agent).run()

    assert summary.stopped.startswith("max_trials reached")
    assert verify(config.run_dir).ok
    baseline, candidate = Ledger(config.run_dir / "ledger.jsonl").records()
    assert baseline.decision is Decision.BASELINE and baseline.status is Status.OK
    assert baseline.val_bpb is not None and 0 < baseline.val_bpb < 20
    assert baseline.runs[0].backend == "local" and baseline.runs[0].artifact_sha256
    share = baseline.runs[0].compute_share  # measured from the host, recorded in the ledger
    assert share is not None and 0 < share <= 1 and baseline.runs[0].compute is not None
    assert candidate.kind == "candidate" and candidate.runs and candidate.agent is not None
    assert candidate.decision in {Decision.KEEP, Decision.DISCARD, Decision.CRASH}
    diff = (config.run_dir / "trials" / candidate.trial_id / "parent.diff").read_text(encoding="utf-8")
    assert diff.startswith("--- a/train.py")
    assert len(ResultsFile(config.run_dir / "results.tsv").read()) == 2
    png, md = write_report(config.run_dir)
    assert png.stat().st_size > 0 and "baseline" in md.read_text(encoding="utf-8")
