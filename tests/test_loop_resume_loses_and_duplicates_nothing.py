"""A controller killed at any point resumes without losing or duplicating a trial: trial ids stay
monotonic and unique, a trial with a ledger row is never re-run, a trial folder without one is run
again (its partial output kept under interrupted/) or abandoned, results.tsv gets the rows a crash
left out, and the lineage is moved to agree with the ledger (a commit without a row is orphaned).

The kills are simulated in-process with a BaseException (nothing catches it, like a kill), and once
for real: a child controller is SIGKILLed while its sandbox is running a trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.agents.base import AgentContext, Proposal
from harness.config import RunConfig
from harness.loop import ResearchLoop
from harness.records.chain import Ledger, verify
from harness.records.lineage import DISCARDED, ORPHANED, PENDING, Lineage
from harness.records.results import ResultsFile, format_row
from sandbox.constants import Decision
from sandbox.verdict import TrialSpec
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, Sleeps, edit, run_config, with_score

REPO = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler in the loop catches it."""


def improving(n: int, start: float = 0.95, step: float = 0.05) -> list[Callable[[AgentContext], Proposal]]:
    """n proposals, alternately a clear improvement and a clear regression."""

    def scored(score: float) -> Callable[[AgentContext], Proposal]:
        return edit(lambda text: with_score(text, score), f"score {score:.2f}")

    return [scored(start - step * (i // 2) if i % 2 == 0 else 5.0) for i in range(n)]


def kill_once_at(trial_id: str) -> Callable[[TrialSpec], None]:
    fired: list[str] = []

    def hook(spec: TrialSpec) -> None:
        if spec.trial_id == trial_id and not fired:
            fired.append(trial_id)
            (spec.trial_dir / "partial.log").write_text("half a run\n", encoding="utf-8")
            raise Killed(trial_id)

    return hook


def assert_consistent(config: RunConfig) -> list[Any]:
    """Every record agrees with every other: the invariants a resumed run must keep."""
    run_dir = config.run_dir
    check = verify(run_dir)
    assert check.ok, check.bad
    records = Ledger(run_dir / "ledger.jsonl").records()
    ids = [r.trial_id for r in records]
    assert len(ids) == len(set(ids)), f"duplicated trial: {ids}"
    assert ids == sorted(ids), "trial ids are monotonic"
    tsv = ResultsFile(run_dir / "results.tsv").read()
    assert [format_row(r) for r in tsv] == [format_row(r.result_row()) for r in records]
    lineage = Lineage(run_dir / "lineage", config.run_tag)
    keeps = [r for r in records if r.decision is Decision.KEEP]
    assert lineage.head() == (keeps[-1].candidate_commit if keeps else lineage.root())
    assert lineage.refs(PENDING) == {}
    assert lineage.refs(DISCARDED) == {
        r.trial_id: r.candidate_commit
        for r in records
        if r.kind == "candidate" and r.decision is not Decision.KEEP
    }
    return records


def test_killed_between_trial_folder_and_ledger_row(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=4)
    with pytest.raises(Killed):
        ResearchLoop(config, FakeSandbox(on_run=kill_once_at("t0003")), ScriptedAgent(improving(4))).run()
    assert len(Ledger(config.run_dir / "ledger.jsonl").records()) == 3  # t0003 has a folder, no row
    assert (config.run_dir / "trials/t0003/trial.json").exists()

    sandbox = FakeSandbox()
    agent = ScriptedAgent(improving(4)[1:])  # t0003 is re-run from its folder: no new proposal for it
    summary = ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    assert summary.stopped.startswith("max_trials reached")
    records = assert_consistent(config)
    assert [r.trial_id for r in records] == [f"t{i:04d}" for i in range(6)]
    assert sandbox.calls[0].trial_id == "t0003"  # the interrupted trial first, under its own id
    assert records[3].description == "score 5.00"
    assert (config.run_dir / "trials/t0003/interrupted/1/partial.log").is_file()  # kept, not deleted
    assert not (config.run_dir / "trials/t0003/partial.log").exists()


def test_killed_after_the_ledger_row_before_tsv_and_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = run_config(tmp_path, max_trials=2)
    original = ResultsFile.append
    calls: list[int] = []

    def append_then_die(self: ResultsFile, rows: Any) -> None:
        if rows:
            calls.append(1)
        if len(calls) == 3 and rows:  # the keep's row (after two baseline rows): the ledger already has it
            raise Killed("between the ledger and results.tsv")
        original(self, rows)

    monkeypatch.setattr(ResultsFile, "append", append_then_die)
    with pytest.raises(Killed):
        ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(2))).run()
    monkeypatch.setattr(ResultsFile, "append", original)
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    assert records[-1].decision is Decision.KEEP
    lineage = Lineage(config.run_dir / "lineage", "test")
    assert lineage.head() != records[-1].candidate_commit  # the branch never moved

    loop = ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(2)[1:]), sleep=Sleeps())
    summary = loop.run()
    assert any("results.tsv: appended 1 row" in c for c in summary.changes)
    assert any("autoresearch/test" in c for c in summary.changes)  # the branch caught up
    records = assert_consistent(config)
    assert [r.decision for r in records] == [
        Decision.BASELINE,
        Decision.BASELINE,
        Decision.KEEP,
        Decision.DISCARD,
    ]


def test_half_prepared_and_exhausted_trials_are_abandoned_not_rerun(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1)
    ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(1)), sleep=Sleeps()).run()
    lineage = Lineage(config.run_dir / "lineage", "test")
    head = lineage.head()
    assert head is not None
    # A trial that died while being prepared: folder and commit, but no trial.json.
    half = config.run_dir / "trials/t0003"
    half.mkdir()
    (half / "train.py").write_text("x = 1\n", encoding="utf-8")
    orphan = lineage.commit_candidate("x = 1\n", parent=head, trial_id="t0003", description="half")
    # A trial that keeps killing the controller: with trial_starts=1, one start is all it gets.
    config2 = run_config(
        tmp_path, max_trials=2, retries=config.retries.model_copy(update={"trial_starts": 1})
    )
    with pytest.raises(Killed):
        ResearchLoop(
            config2, FakeSandbox(on_run=kill_once_at("t0004")), ScriptedAgent(improving(2)[1:])
        ).run()
    assert (config.run_dir / "trials/t0003.abandoned").is_dir()
    assert lineage.refs(ORPHANED) == {"t0003": orphan}

    summary = ResearchLoop(config2, FakeSandbox(), ScriptedAgent(improving(2)[1:]), sleep=Sleeps()).run()
    assert any("t0004: abandoned" in c for c in summary.changes)
    records = assert_consistent(config2)
    assert [r.trial_id for r in records] == ["t0000", "t0001", "t0002", "t0005"]  # ids never reused
    assert set(lineage.refs(ORPHANED)) == {"t0003", "t0004"}


def test_a_torn_ledger_line_is_repaired_and_the_run_goes_on(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1)
    ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(1)), sleep=Sleeps()).run()
    ledger = config.run_dir / "ledger.jsonl"
    with ledger.open("ab") as f:
        f.write(b'{"trial_id":"t0003","sta')  # killed inside the write of the next row
    config2 = run_config(tmp_path, max_trials=2)
    summary = ResearchLoop(config2, FakeSandbox(), ScriptedAgent(improving(2)[1:]), sleep=Sleeps()).run()
    assert any("incomplete final line" in c for c in summary.changes)
    assert len(assert_consistent(config2)) == 4
    assert list(config.run_dir.glob("ledger.jsonl.torn-*"))


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.agent_fakes import ScriptedAgent
    from harness.loop import ResearchLoop
    from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, run_config
    from tests.test_loop_resume_loses_and_duplicates_nothing import improving

    tmp, marker = Path(sys.argv[1]), Path(sys.argv[2])

    def block(spec):
        if spec.trial_id == "t0003":
            marker.write_text("running", encoding="utf-8")
            time.sleep(300)

    ResearchLoop(run_config(tmp, max_trials=3), FakeSandbox(on_run=block), ScriptedAgent(improving(3))).run()
    """
)


def test_sigkilled_controller_resumes_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(marker)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the child controller exited early"
            assert time.monotonic() < deadline, "the child never reached t0003"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert (tmp_path / "run/run.owner").exists()  # no finally ran: the kill left its marks

    config = run_config(tmp_path, max_trials=3)
    sandbox = FakeSandbox()
    summary = ResearchLoop(config, sandbox, ScriptedAgent(improving(3)[1:]), sleep=Sleeps()).run()
    assert summary.recorded == 2  # t0003 again, then t0004
    assert sandbox.calls[0].trial_id == "t0003"
    records = assert_consistent(config)
    assert [r.trial_id for r in records] == [f"t{i:04d}" for i in range(5)]
    assert not (tmp_path / "run/run.owner").exists()


def test_sigterm_stops_cleanly_and_the_next_start_reruns_the_trial(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=2)

    def terminate(spec: TrialSpec) -> None:
        if spec.trial_id == "t0002":
            os.kill(os.getpid(), signal.SIGTERM)  # the loop turns it into a KeyboardInterrupt
            assert sandbox.cancel is not None and sandbox.cancel.wait(30)  # which cancels the trial

    sandbox = FakeSandbox(on_run=terminate)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        ResearchLoop(config, sandbox, ScriptedAgent(improving(2))).run()
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    assert not (config.run_dir / "run.owner").exists()  # the run lock and its marker are released
    assert len(Ledger(config.run_dir / "ledger.jsonl").records()) == 2  # t0002 not recorded
    summary = ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(2)[1:]), sleep=Sleeps()).run()
    assert summary.recorded == 2
    assert [r.trial_id for r in assert_consistent(config)] == [f"t{i:04d}" for i in range(4)]


def test_a_signal_while_records_are_written_waits_until_they_are_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = run_config(tmp_path, max_trials=2)
    original = ResultsFile.append
    sent: list[int] = []

    def append_during_sigint(self: ResultsFile, rows: Any) -> None:
        if rows and rows[0].status == "keep" and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the ledger row and the rest
        original(self, rows)

    monkeypatch.setattr(ResultsFile, "append", append_during_sigint)
    with pytest.raises(KeyboardInterrupt):
        ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(2))).run()
    records = assert_consistent(config)  # ledger, results.tsv and lineage all have the keep
    assert records[-1].decision is Decision.KEEP and len(records) == 3
