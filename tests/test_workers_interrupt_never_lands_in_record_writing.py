"""Cancelling a run (Ctrl-C, SIGTERM, or `ResearchLoop.cancel.set()`) stops every worker where it is,
but a worker writing its records finishes them.

Cancellation is one `threading.Event` per run, passed to every `Sandbox.run_trial` and
`Agent.propose` call and waited on by every controller wait; nothing is raised into a worker from
outside. So a trial being run or proposed ends at once and gets no ledger row (the next `run`
re-runs it), a retry backoff is cut short, and a worker that was between its ledger row and its
results.tsv row and lineage ref when the signal came writes all three before it stops.

Without the main thread waiting for its workers, or with a check of the event (or an asynchronous
exception) between the ledger row and the rest, the first test finds results.tsv or the lineage
behind the ledger; with a backoff that sleeps instead of waiting on the event, the second hangs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.agents.base import AgentCancelled, AgentContext, Proposal, Usage
from harness.loop import ResearchLoop
from harness.records.chain import Ledger
from harness.records.results import ResultsFile
from sandbox.verdict import TrialSpec
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, Sleeps, run_config
from tests.workers_fakes import WAIT_S, RecordingSandbox, assert_records_agree, leases_for, scored, wait_until


def test_a_signal_during_record_writing_lets_the_records_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = run_config(tmp_path, workers=2, max_trials=6)
    sandbox = RecordingSandbox()
    loop = ResearchLoop(
        config,
        sandbox,
        scored(0.95, 1.5, 0.9, 1.2, 0.97, 0.93),
        sleep=Sleeps(),
        leases=leases_for(tmp_path, 2),
    )
    original = ResultsFile.append
    events: list[str] = []

    def append_during_sigint(self: ResultsFile, rows: Any) -> None:
        if rows and rows[0].description.startswith("score") and not events:
            events.append(f"ledger row {rows[0].description}")
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the ledger row and the rest
            wait_until(loop.cancel.is_set, "the main thread to cancel the run")
            for _ in range(100):  # many bytecode boundaries where an exception could land
                time.sleep(0.002)
            original(self, rows)
            events.append("results.tsv row")
            return
        original(self, rows)

    monkeypatch.setattr(ResultsFile, "append", append_during_sigint)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    events.append("run() returned")

    assert events[1:] == ["results.tsv row", "run() returned"], "run() ended before the records were complete"
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    folders = {p.name for p in (config.run_dir / "trials").iterdir()}
    unrecorded = sorted(folders - {r.trial_id for r in records})
    assert all((config.run_dir / "trials" / t / "trial.json").is_file() for t in unrecorded), (
        "re-run next time"
    )
    records = assert_records_agree(config, unrecorded=unrecorded)  # ledger, results.tsv and lineage agree
    assert events[0] in {f"ledger row {r.description}" for r in records}
    assert {s.split("-")[0] for s in sandbox.cancelled} <= set(unrecorded), "a cancelled trial has no row"
    assert sum(1 for r in records if r.kind == "candidate") < 6, "the run stopped when cancelled"


def test_a_backoff_wait_is_cut_short_by_the_cancel_event(tmp_path: Path) -> None:
    config = run_config(
        tmp_path, retries=run_config(tmp_path).retries.model_copy(update={"sandbox_backoff_s": 3600.0})
    )
    failed = threading.Event()

    def hiccup(spec: TrialSpec) -> None:
        failed.set()

    loop = ResearchLoop(config, FakeSandbox(infra_failures=99, on_run=hiccup), ScriptedAgent())  # real waits
    summary: list[Any] = []
    thread = threading.Thread(target=lambda: summary.append(loop.run()), daemon=True)
    thread.start()
    assert failed.wait(WAIT_S)
    loop.cancel.set()  # what Ctrl-C does, from an embedding program
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the one-hour backoff did not end when the run was cancelled"
    assert summary and summary[0].stopped == "cancelled" and summary[0].recorded == 0
    assert Ledger(config.run_dir / "ledger.jsonl").records() == []


class WaitingAgent:
    """Proposes like a slow model: until the cancel event is set, then raises AgentCancelled with what
    the attempt cost so far, as the real agents do."""

    name = "waiting"

    def __init__(self) -> None:
        self.asked = threading.Event()

    def propose(self, ctx: AgentContext, cancel: threading.Event | None = None) -> Proposal:
        assert cancel is not None
        self.asked.set()
        cancel.wait(WAIT_S)
        raise AgentCancelled("cancelled", usage=Usage(model="m", input_tokens=10, cost_usd=0.5, api_calls=1))


def test_a_cancelled_proposal_plans_no_trial_and_its_cost_is_recorded(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=3)
    agent = WaitingAgent()
    loop = ResearchLoop(config, FakeSandbox(), agent, sleep=Sleeps())  # type: ignore[arg-type]
    summary: list[Any] = []
    thread = threading.Thread(target=lambda: summary.append(loop.run()), daemon=True)
    thread.start()
    assert agent.asked.wait(WAIT_S)
    loop.cancel.set()
    thread.join(WAIT_S)
    assert not thread.is_alive() and summary[0].stopped == "cancelled"
    ledger = Ledger(config.run_dir / "ledger.jsonl")
    assert [r.kind for r in ledger.records()] == ["baseline", "baseline"]  # no candidate row or folder
    assert sorted(p.name for p in (config.run_dir / "trials").iterdir()) == ["t0000", "t0001"]
    assert [s.agent.usage.cost_usd for s in ledger.spends()] == [0.5]
