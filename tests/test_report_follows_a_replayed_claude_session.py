"""A replayed 10-proposal Claude session, whose scripted replies use every tool (view_file,
str_replace, rewrite_file, finish, write_notes, view_trial, and propose_guidance for one program
evolution step), produces a run folder a reader can follow from report.md alone: the kept changes with
their diffs, every trial, the notes' history, the cost, and the program edit; and its ledger verifies.

Driven through the REAL anthropic SDK against the local fake Messages API server, with the loop tests'
fake sandbox. Set AUTORESEARCH_KEEP_SESSION=<folder> to keep a copy of the run folder to read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.records.chain import Ledger, verify
from harness.report import write_report
from sandbox.constants import Decision
from tests.agent_fakes import FakeMessagesServer, tool_use_block
from tests.claude_loop import CALL_COST, INJECTION, MODEL, USAGE, fake_server, propose, run
from tests.test_loop_fakes_honour_the_protocols import START

BEST_1 = START.replace("SCORE = 1.000000", "SCORE = 0.900000")
GUIDANCE = "Lower SCORE directly: it is the only knob that moved val_bpb. Leave the PAD_* lines alone."


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    yield from fake_server(monkeypatch)


def finish(server: FakeMessagesServer, description: str) -> None:
    server.reply(tool_use_block("finish", {"description": description}), usage=USAGE, model=MODEL)


def script(server: FakeMessagesServer) -> None:
    """Ten proposals (t0002..t0011) and one program-evolution step after the fifth."""
    # t0002: read the file, start the notes, lower SCORE: a keep.
    server.reply(tool_use_block("view_file", {}), usage=USAGE, model=MODEL)
    propose(
        server,
        "SCORE = 1.000000",
        "SCORE = 0.900000",
        "SCORE 1.0 -> 0.9",
        notes="# Notes\n- SCORE is the lever.\n",
    )
    # t0003: look at the keep, try a padding line: a discard.
    propose(server, "PAD_1 = 1", "PAD_1 = 2", "PAD_1 1 -> 2", view="t0002")
    # t0004: notes over the cap (refused), then shorter ones; a whole-file rewrite that prints an injection.
    server.reply(
        tool_use_block("write_notes", {"content": "y" * 9000}),
        tool_use_block("write_notes", {"content": "# Notes\n- SCORE is the lever.\n- PAD_1 does nothing.\n"}),
        tool_use_block("rewrite_file", {"content": BEST_1.replace("PAD_2 = 2", "PAD_2 = 5\nINJECT = 1")}),
        usage=USAGE,
        model=MODEL,
    )
    finish(server, "PAD_2 2 -> 5 (and print more)")
    # t0005: look up the trial that printed the injection and quote it in the notes.
    propose(
        server,
        "PAD_3 = 3",
        "PAD_3 = 4",
        "PAD_3 3 -> 4",
        view="t0004",
        notes=f"# Notes\n- SCORE is the lever.\n- PADs do nothing.\n- t0004's log said: {INJECTION}\n",
    )
    # t0006: a str_replace that misses, then a crash on purpose.
    server.reply(
        tool_use_block("str_replace", {"old_str": "NO SUCH LINE", "new_str": "x"}), usage=USAGE, model=MODEL
    )
    propose(server, 'OUTCOME = "ok"', 'OUTCOME = "crash"', "see what a crash looks like")
    # program evolution after 5 candidates: look at a trial, then propose guidance.
    server.reply(tool_use_block("view_trial", {"trial_id": "t0002"}), usage=USAGE, model=MODEL)
    server.reply(
        tool_use_block("propose_guidance", {"guidance": GUIDANCE, "description": "focus on SCORE"}),
        usage=USAGE,
        model=MODEL,
    )
    # t0007: the second keep.
    propose(server, "SCORE = 0.900000", "SCORE = 0.800000", "SCORE 0.9 -> 0.8")
    # t0008..t0011: discards, more notes and look-ups.
    propose(
        server, "PAD_1 = 1", "PAD_1 = 3", "PAD_1 1 -> 3", notes="# Notes\n- SCORE: 1.0 -> 0.9 -> 0.8 kept.\n"
    )
    propose(server, "PAD_2 = 2", "PAD_2 = 3", "PAD_2 2 -> 3")
    propose(server, "PAD_3 = 3", "PAD_3 = 5", "PAD_3 3 -> 5", view="t0007")
    propose(
        server, "PAD_1 = 1", "PAD_1 = 4", "PAD_1 1 -> 4", notes="# Notes\n- Only SCORE matters; try 0.7.\n"
    )


def test_a_replayed_session_reads_from_report_md_alone(tmp_path: Path, server: FakeMessagesServer) -> None:
    script(server)

    run(tmp_path, server, max_trials=10, program_evolution_every=5)
    run_dir = tmp_path / "run"
    _, md = write_report(run_dir)
    keep = os.environ.get("AUTORESEARCH_KEEP_SESSION")
    if keep:
        shutil.copytree(run_dir, Path(keep), dirs_exist_ok=True)

    ledger = Ledger(run_dir / "ledger.jsonl")
    records = [r for r in ledger.records() if r.kind == "candidate"]
    assert [r.trial_id for r in records] == [f"t{i:04d}" for i in range(2, 12)]
    assert [r.trial_id for r in records if r.decision is Decision.KEEP] == ["t0002", "t0007"]
    assert len(ledger.programs()) == 1
    assert verify(run_dir).ok

    report = md.read_text(encoding="utf-8")
    for r in records:
        assert f"| {r.trial_id} |" in report
    assert "### t0002: SCORE 1.0 -> 0.9" in report and "+SCORE = 0.900000" in report
    assert "### t0007: SCORE 0.9 -> 0.8" in report and "+SCORE = 0.800000" in report
    # the notes' history: five versions, as diffs, and the notes as they are now
    assert "## Research notes" in report and "rewrote its notes 5 time(s)" in report
    for trial in ("t0002", "t0004", "t0005", "t0008", "t0011"):
        assert f"### written with {trial}" in report
    assert "+- PAD_1 does nothing." in report and "- Only SCORE matters; try 0.7." in report
    # the cost: 24 API calls = 10 proposals of 2 calls, one more each for t0002 (view_file) and t0006
    # (the missed edit), and the program step's 2
    assert f"agent cost so far: ${24 * CALL_COST:.4f}" in report and "24 API calls" in report
    assert "program evolution" in report
    # the program edit, as a diff
    assert (
        "## Program edits" in report
        and "p0001 after 5 candidates (applied" in report
        and "focus on SCORE" in report
    )
    assert f"+{GUIDANCE}" in report
