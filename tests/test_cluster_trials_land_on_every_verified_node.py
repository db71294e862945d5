"""A run dispatched over a Ray cluster records what a run on one host records, plus where each run
ran: with two worker nodes and two workers, trials land on both nodes, every run in every ledger
row names its node (id, name, hardware class, the accepted dispatch), every dispatch in the journal
is closed as accepted exactly once, the ledger verifies, results.tsv agrees with it, and rows
without a node (a run on one host) are written exactly as before clusters existed.

Engine-free: each node runs the trial with a fake runner that writes a trial folder (FakeSandbox).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.loop import ResearchLoop
from harness.records.schemas import RunRecord, TrialRecord
from sandbox.cluster.dispatch import RaySandbox
from sandbox.cluster.journal import DispatchJournal, journal_summary
from sandbox.constants import Status
from tests.ray_cluster import FakeNodeRunner, LocalCluster
from tests.test_loop_fakes_honour_the_protocols import Sleeps
from tests.workers_fakes import assert_records_agree, leases_for, scored, workers_config


def test_two_nodes_two_workers_every_row_names_its_node(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    config = workers_config(tmp_path, 2, max_trials=4)
    sandbox = RaySandbox(
        ray_cluster.address,
        config.run_dir,
        profile="tiny",
        limits=config.limits,
        runner=FakeNodeRunner(delay_s=0.5),
    )
    assert set(sandbox.nodes) == set(ray_cluster.nodes.values()), sandbox.refused
    summary = ResearchLoop(
        config, sandbox, scored(0.97, 1.2, 0.95, 0.99), sleep=Sleeps(), leases=leases_for(tmp_path, 2)
    ).run()

    assert summary.stopped.startswith("max_trials reached: 4"), summary.stopped
    records = assert_records_agree(config)
    names = {v: k for k, v in ray_cluster.nodes.items()}
    seen: set[str] = set()
    for record in records:
        assert record.runs, f"{record.trial_id} ran"
        for run in record.runs:
            assert run.node is not None, f"{record.trial_id} run {run.run} names no node"
            assert names[run.node.node_id] == run.node.node_name
            assert run.node.hardware_class == "cpu:fake"
            seen.add(run.node.node_name)
            verdict = json.loads(
                (config.run_dir / "trials" / record.trial_id / run.folder / "verdict.json").read_text()
            )
            assert verdict["node"]["dispatch_id"] == run.node.dispatch_id
    assert seen == set(ray_cluster.nodes), f"trials landed on {seen} only"

    runs = sum(len(r.runs) for r in records)
    assert journal_summary(config.run_dir) == {"accepted": runs}
    assert DispatchJournal(config.run_dir).open_dispatches() == []


def test_a_row_without_a_node_is_written_as_before() -> None:
    run = RunRecord(run=0, sandbox_trial_id="t0001", folder="run0", seed=1, status=Status.OK, val_bpb=1.0)
    record = TrialRecord(
        trial_id="t0001",
        kind="baseline",
        worker="w",
        parent_commit=None,
        candidate_commit="c" * 40,
        status=Status.OK,
        decision="baseline",
        reason="",
        description="",
        val_bpb=1.0,
        code_lines=1,
        runs=[run],
        started_at="a",
        finished_at="b",
    )
    row = record.to_row()
    assert "node" not in row["runs"][0]
    assert TrialRecord.model_validate(row).runs[0].node is None
