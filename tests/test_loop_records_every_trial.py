"""Every trial the loop runs is recorded exactly once, in every record: a ledger row that verifies,
a results.tsv row in the reference format, a trial folder with its candidate, diff, verdict and
manifest (derived from the row: the same facts, never written twice), and a lineage commit whose ref
matches the decision. `verify-ledger` passes on the result, then fails naming the row once one number
in the JSONL is edited.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.loop import ResearchLoop
from harness.records.chain import Ledger, verify
from harness.records.lineage import DISCARDED, PENDING, Lineage
from harness.records.manifest import MANIFEST_FILE, manifest_for, manifest_text, tree_hashes
from harness.records.results import HEADER
from sandbox.constants import Decision, Status
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import (
    PEAK_BYTES,
    FakeSandbox,
    Sleeps,
    edit,
    run_config,
    with_outcome,
    with_score,
)


@pytest.fixture
def six_trials(tmp_path: Path) -> tuple[Path, FakeSandbox, ScriptedAgent]:
    """Two baseline runs, then four candidates: an improvement, a regression, a timeout, no change."""
    config = run_config(tmp_path, max_trials=4)
    agent = ScriptedAgent(
        [
            edit(lambda t: with_score(t, 0.95), "lower the score"),
            edit(lambda t: with_score(t, 1.20), "raise\tthe\nscore"),
            edit(lambda t: with_outcome(t, "timeout"), "hang forever"),
            edit(lambda t: t, "touch nothing"),
        ]
    )
    sandbox = FakeSandbox(noise=0.001)
    summary = ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    assert summary.stopped.startswith("max_trials reached")
    return config.run_dir, sandbox, agent


def test_six_trials_give_six_rows_with_the_exact_header(
    six_trials: tuple[Path, FakeSandbox, ScriptedAgent],
) -> None:
    run_dir, sandbox, _ = six_trials
    lines = (run_dir / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription" == HEADER
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 6
    assert [r[3] for r in rows] == ["baseline", "baseline", "keep", "discard", "crash", "crash"]
    assert all(len(r) == 5 and len(r[0]) == 7 for r in rows)
    assert rows[4][1] == rows[5][1] == "0.000000"  # no score
    assert rows[2][1] != "0.000000" and len(rows[2][1].split(".")[1]) == 6
    assert rows[0][2] == f"{PEAK_BYTES / 1024**3:.1f}"
    assert rows[3][4] == "raise the score"  # the agent's tab and newline cannot break the format
    # 2 baseline + the keep's first run and its 2 confirmation pairs (it and the best) + regression + timeout
    assert len(sandbox.calls) == 2 + 1 + 4 + 1 + 1


def test_ledger_rows_carry_the_audit_fields(six_trials: tuple[Path, FakeSandbox, ScriptedAgent]) -> None:
    run_dir, _, _ = six_trials
    records = Ledger(run_dir / "ledger.jsonl").records()
    assert [r.trial_id for r in records] == [f"t{i:04d}" for i in range(6)]
    keep = records[2]
    assert keep.decision is Decision.KEEP and keep.status is Status.OK
    assert len(keep.runs) == 5 and len(set(keep.seeds)) == 3  # the first run, then 2 pairs, a seed each
    assert [r.role for r in keep.runs] == ["candidate", "candidate", "best", "best", "candidate"]
    assert [r.pair for r in keep.runs] == [0, 1, 1, 2, 2]
    assert {r.commit for r in keep.runs if r.role == "best"} == {records[0].candidate_commit}
    mine = [r.val_bpb or 0 for r in keep.runs if r.role == "candidate"]
    assert keep.val_bpb == pytest.approx(sum(mine) / 3)  # the candidate's runs, not the best's
    assert keep.claimed_val_bpb is not None and keep.claimed_val_bpb < 0.5  # recorded, not trusted
    assert keep.judge is not None and keep.judge["threshold"] > 0
    assert keep.images == {"trainer": "sha256:" + "f" * 64} and keep.limits["time_budget_s"] == 5
    assert keep.agent is not None and keep.agent.name == "scripted"
    assert {"train.py", "parent.diff", "verdict.json", "manifest.json", "confirm/verdict.json"} <= set(
        keep.hashes
    )
    folder = run_dir / "trials" / keep.trial_id
    for rel, digest in keep.hashes.items():
        assert digest == hashlib.sha256((folder / rel).read_bytes()).hexdigest(), rel
    assert records[4].status is Status.TIMEOUT and records[4].decision is Decision.CRASH
    no_change = records[5]
    assert no_change.runs == [] and no_change.reason.startswith("no change")
    assert records[0].seeds[0] != records[1].seeds[0]  # baseline runs use different seeds


def test_each_manifest_is_derived_from_its_ledger_row(
    six_trials: tuple[Path, FakeSandbox, ScriptedAgent],
) -> None:
    run_dir, _, _ = six_trials
    records = [r for r in Ledger(run_dir / "ledger.jsonl").records() if MANIFEST_FILE in r.hashes]
    assert len(records) >= 5
    for record in records:
        path = run_dir / "trials" / record.trial_id / MANIFEST_FILE
        expected = manifest_text(manifest_for(record, tree_hashes(record.hashes)))
        assert path.read_text(encoding="utf-8") == expected, record.trial_id


def test_trial_folders_keep_discarded_diffs(six_trials: tuple[Path, FakeSandbox, ScriptedAgent]) -> None:
    run_dir, _, _ = six_trials
    discarded = run_dir / "trials" / "t0003"
    diff = (discarded / "parent.diff").read_text(encoding="utf-8")
    assert "-SCORE = 0.950000" in diff and "+SCORE = 1.200000" in diff
    manifest = json.loads((discarded / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["candidate_commit"] and manifest["hashes"]["train.py"]
    assert (discarded / "verdict.json").is_file() and (discarded / "train.log").is_file()


def test_lineage_matches_the_decisions(six_trials: tuple[Path, FakeSandbox, ScriptedAgent]) -> None:
    run_dir, _, _ = six_trials
    records = Ledger(run_dir / "ledger.jsonl").records()
    lineage = Lineage(run_dir / "lineage", "test")
    assert lineage.head() == records[2].candidate_commit
    assert lineage.refs(PENDING) == {}
    assert lineage.refs(DISCARDED) == {r.trial_id: r.candidate_commit for r in records[3:]}
    assert lineage.read(records[3].candidate_commit) == (run_dir / "trials/t0003/train.py").read_text()
    assert records[3].parent_commit == records[2].candidate_commit  # proposed from the new best


def test_the_agent_sees_history_and_the_last_verdict(
    six_trials: tuple[Path, FakeSandbox, ScriptedAgent],
) -> None:
    _, _, agent = six_trials
    first, after_keep, _, after_timeout = agent.calls[:4]
    assert first.best_val_bpb is not None and first.last is not None and first.last.decision == "baseline"
    assert "SCORE = 0.950000" in after_keep.train_py  # proposals start from the current best
    assert after_timeout.last is not None and after_timeout.last.status == "timeout"
    assert "val_bpb:" in after_timeout.last.log_tail  # the raw tail, for the agent to fence
    assert [h.trial_id for h in after_timeout.history] == ["t0000", "t0001", "t0002", "t0003", "t0004"]


def test_verify_ledger_passes_then_fails_naming_the_edited_row(
    six_trials: tuple[Path, FakeSandbox, ScriptedAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _, _ = six_trials
    assert main(["verify-ledger", str(run_dir)]) == 0
    assert "6 rows verify" in capsys.readouterr().out
    ledger = run_dir / "ledger.jsonl"
    lines = ledger.read_text(encoding="utf-8").splitlines(keepends=True)
    row = json.loads(lines[3])
    old = f'"val_bpb":{json.dumps(row["val_bpb"])}'
    assert old in lines[3]
    lines[3] = lines[3].replace(old, f'"val_bpb":{json.dumps(row["val_bpb"] - 0.1)}')
    ledger.write_text("".join(lines), encoding="utf-8")
    assert main(["verify-ledger", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "row 3 (line 4)" in out
    assert verify(run_dir).rows == 3


def test_git_sees_every_candidate_as_a_commit(six_trials: tuple[Path, FakeSandbox, ScriptedAgent]) -> None:
    run_dir, _, _ = six_trials
    out = subprocess.run(
        ["git", f"--git-dir={run_dir / 'lineage'}", "log", "--all", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 5  # the root and four candidates
