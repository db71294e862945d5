"""A worker node lost in the middle of a trial costs a re-dispatch, never a double record.

The attack on the records: a node dies (its raylet SIGKILLed) while it runs a trial. Ray reports
the task failed; the dispatcher must close that dispatch as `lost`, stop using the node, and send
the trial to another verified node as the next attempt. Afterwards: each trial has exactly one
ledger row, no row names the dead node, the journal holds exactly one `lost` dispatch and one
`accepted` dispatch per run, the process that ran the lost trial is gone, and the ledger verifies.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from harness.loop import ResearchLoop
from sandbox.cluster.dispatch import RaySandbox
from sandbox.cluster.journal import DispatchJournal, journal_summary
from tests.ray_cluster import FakeNodeRunner, LocalCluster, marks
from tests.test_loop_fakes_honour_the_protocols import Sleeps
from tests.workers_fakes import assert_records_agree, leases_for, scored, workers_config

DELAY_S = 8.0  # long enough that the kill lands mid-trial on a loaded 2-core host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_node_killed_midtrial(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    doomed = ray_cluster.add_node("node-doomed")
    config = workers_config(
        tmp_path,
        3,
        max_trials=2,
        judge=workers_config(tmp_path, 3).judge.model_copy(update={"baseline_repeats": 3}),
    )
    mark_dir = tmp_path / "marks"
    mark_dir.mkdir()
    sandbox = RaySandbox(
        ray_cluster.address,
        config.run_dir,
        profile="tiny",
        limits=config.limits,
        runner=FakeNodeRunner(delay_s=DELAY_S, marks=mark_dir),
    )
    assert doomed in sandbox.nodes and len(sandbox.nodes) == 3, sandbox.refused
    loop = ResearchLoop(config, sandbox, scored(0.97, 0.99), sleep=Sleeps(), leases=leases_for(tmp_path, 3))

    import threading

    killed: list[int] = []
    victim: dict[str, object] = {}

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            on_doomed = [m for m in marks(mark_dir) if m["node_id"] == doomed]
            if on_doomed:
                victim.update(on_doomed[0])
                time.sleep(0.5)  # well inside the trial's DELAY_S
                killed.extend(ray_cluster.kill_node("node-doomed"))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = loop.run()
    thread.join(5)

    assert killed, "the doomed node's raylet was found and killed"
    assert summary.stopped.startswith("max_trials reached: 2"), summary.stopped
    records = assert_records_agree(config)
    assert Counter(r.trial_id for r in records).most_common(1)[0][1] == 1
    nodes = [
        (r.trial_id, run.role, run.status, run.node and run.node.node_id) for r in records for run in r.runs
    ]
    assert all(run.node is not None and run.node.node_id != doomed for r in records for run in r.runs), (
        doomed,
        nodes,
    )
    lost_trial = str(victim["trial"])
    assert lost_trial in {run.sandbox_trial_id for r in records for run in r.runs}, (
        "the lost trial was recorded"
    )

    runs = sum(len(r.runs) for r in records)
    assert journal_summary(config.run_dir) == {"accepted": runs, "lost": 1}
    journal = DispatchJournal(config.run_dir)
    attempts = [e for e in journal.events() if e.get("event") == "dispatch" and e["trial_id"] == lost_trial]
    assert [e["attempt"] for e in attempts] == [1, 2] and attempts[0]["node_id"] == doomed
    assert attempts[1]["node_id"] != doomed
    assert doomed not in sandbox.nodes

    deadline = time.monotonic() + 30
    pid = int(str(victim["pid"]))
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the Ray worker that ran the lost trial is gone"
