"""A run never continues on edited history: resuming a run folder whose ledger was edited (a row
changed, with or without its hash recomputed, removed, reordered, reformatted, or a row appended
without a valid hash) stops at start-up with an error naming the first bad row and saying what to
do, before the agent or the sandbox is called, and leaves every file as it found it.

Attack defeated: someone (or something) with write access to the run folder lowers a recorded score,
forges a keep, or drops an inconvenient trial, and the loop carries on judging new candidates against
a bar taken from the forged history. tests/test_ledger_hash_chain_detects_edits.py shows `verify`
sees each edit; this file shows the real resume path (`ResearchLoop.run`, and `python -m harness run`)
acts on it. The sandbox and the agent are the engine-free fakes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import harness.loop_cmds as loop_cmds
from harness.cli import main
from harness.config import RunConfig
from harness.judge import JudgeSettings
from harness.loop import LoopError, ResearchLoop
from harness.records.chain import canonical, row_hash
from sandbox.constants import ExitCode
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import (
    PROGRAM,
    START,
    FakeSandbox,
    Sleeps,
    run_config,
    with_score,
)
from tests.test_loop_resume_loses_and_duplicates_nothing import improving

Lines = list[str]


def _change(lines: Lines, at: int, rehash: bool) -> Lines:
    row = json.loads(lines[at])
    row["val_bpb"] = round(row["val_bpb"] - 0.5, 6)  # a better score than the trial earned
    if rehash:
        row["hash"] = row_hash(row)
    return [*lines[:at], canonical(row).decode(), *lines[at + 1 :]]


def _append_forged(lines: Lines, hash_of: Callable[[dict[str, object]], object]) -> Lines:
    last = json.loads(lines[-1])
    forged = last | {"trial_id": "t9999", "decision": "keep", "val_bpb": 0.1, "index": last["index"] + 1}
    forged["prev_hash"] = last["hash"]
    forged["hash"] = hash_of(forged)
    return [*lines, canonical(forged).decode()]


def _append_unchained(lines: Lines) -> Lines:
    row = json.loads(lines[-1])
    for key in ("index", "prev_hash", "hash"):
        del row[key]
    row |= {"trial_id": "t9999", "decision": "keep", "val_bpb": 0.1}
    return [*lines, canonical(row).decode()]


# (edit, the first bad row it leaves, words of the reason verify gives). The fixture's ledger has six
# rows: three baseline runs, then a keep (t0003), a discard, a keep (t0005).
EDITS: dict[str, tuple[Callable[[Lines], Lines], int, str]] = {
    "row changed": (lambda ls: _change(ls, 3, rehash=False), 3, "the row was edited"),
    "row changed, hash recomputed": (lambda ls: _change(ls, 3, rehash=True), 4, "prev_hash does not match"),
    "row removed": (lambda ls: ls[:2] + ls[3:], 2, "a row was removed, added or moved"),
    "rows reordered": (lambda ls: [*ls[:3], ls[4], ls[3], ls[5]], 3, "a row was removed, added or moved"),
    "row reformatted": (lambda ls: [*ls[:1], json.dumps(json.loads(ls[1])), *ls[2:]], 1, "canonical form"),
    "row appended with a made-up hash": (lambda ls: _append_forged(ls, lambda r: "0" * 64), 6, "edited"),
    "row appended with no hash": (lambda ls: _append_forged(ls, lambda r: None), 6, "edited"),
    "row appended without chain keys": (_append_unchained, 6, "missing index, prev_hash, hash"),
}


def _first_run(tmp_path: Path) -> RunConfig:
    judge = JudgeSettings(baseline_repeats=3, noise_k=2.0, min_delta=0.001, confirm_keeps=True)
    config = run_config(tmp_path, max_trials=3, judge=judge)
    ResearchLoop(config, FakeSandbox(), ScriptedAgent(improving(3)), sleep=Sleeps()).run()
    return config


def _edit(ledger: Path, edit: Callable[[Lines], Lines]) -> None:
    lines = ledger.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    assert [json.loads(line)["decision"] for line in lines[3:]] == ["keep", "discard", "keep"]
    ledger.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder but the controller's own log (a refusal may well be logged)."""
    files = (p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "controller.log")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def test_the_unedited_ledger_resumes(tmp_path: Path) -> None:
    """The control: the same folder, untouched, resumes and records more trials."""
    config = _first_run(tmp_path)
    more = config.model_copy(update={"max_trials": 4})
    summary = ResearchLoop(more, FakeSandbox(), ScriptedAgent(improving(4)[3:]), sleep=Sleeps()).run()
    assert summary.recorded == 1 and summary.total_rows == 7


@pytest.mark.parametrize("name", list(EDITS))
def test_the_loop_refuses_to_resume_on_an_edited_ledger(tmp_path: Path, name: str) -> None:
    edit, bad_row, why = EDITS[name]
    config = _first_run(tmp_path)
    _edit(config.run_dir / "ledger.jsonl", edit)
    before = _snapshot(config.run_dir)

    sandbox, agent = FakeSandbox(), ScriptedAgent(improving(4)[3:])
    more = config.model_copy(update={"max_trials": 4})
    with pytest.raises(LoopError) as refused:
        ResearchLoop(more, sandbox, agent, sleep=Sleeps()).run()

    message = str(refused.value)
    assert f"the ledger {config.run_dir / 'ledger.jsonl'} does not verify: row {bad_row} " in message
    assert why in message
    assert "The run will not continue on edited history" in message
    assert "restore ledger.jsonl from a copy, or start a new run folder" in message
    assert sandbox.calls == [] and agent.calls == []  # nothing ran on the forged history
    assert _snapshot(config.run_dir) == before  # ledger, results.tsv, lineage, trial folders: untouched


@pytest.mark.parametrize(
    "name", ["row changed", "row removed", "rows reordered", "row appended with no hash"]
)
def test_the_run_command_refuses_to_resume_on_an_edited_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """`python -m harness run`, the same command that resumes, exits 1 with the refusal."""
    edit, bad_row, why = EDITS[name]
    monkeypatch.chdir(tmp_path)
    for var in ("AUTORESEARCH_PROFILE", "AUTORESEARCH_AGENT", "AUTORESEARCH_MAX_TRIALS", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    replay = tmp_path / "replay"
    replay.mkdir()
    for i, score in enumerate((0.9, 2.0, 0.8, 0.7)):
        (replay / f"{i:02d}.py").write_text(f"# description: {score}\n" + with_score(START, score), "utf-8")
    sandboxes: list[FakeSandbox] = []

    def make_sandbox(backend: str, data_dir: Path | None) -> FakeSandbox:
        sandboxes.append(FakeSandbox())
        return sandboxes[-1]

    monkeypatch.setattr(loop_cmds, "_make_sandbox", make_sandbox)
    monkeypatch.setattr(loop_cmds, "_ensure_data", lambda profile, data_dir: None)
    argv = ["run", "--profile", "tiny", "--agent", "replay", "--replay-dir", "replay", "--backend", "local"]

    assert main([*argv, "--max-trials", "3"]) == 0
    ledger = tmp_path / "runs/tiny-replay/ledger.jsonl"
    _edit(ledger, edit)
    edited = ledger.read_bytes()
    capsys.readouterr()

    assert main([*argv, "--max-trials", "4"]) == ExitCode.ERROR == 1
    err = capsys.readouterr().err
    assert f"error: the ledger runs/tiny-replay/ledger.jsonl does not verify: row {bad_row} " in err
    assert why in err and "will not continue on edited history" in err
    assert sandboxes[-1].calls == []
    assert ledger.read_bytes() == edited
