"""The Claude agent's notebook persists across proposals and across a resume, refuses notes over its
cap, and `view_trial` shows a recorded trial's diff and a fenced log tail (never a path), refusing ids
it does not know; an injection printed by a candidate stays fenced wherever it comes back to the model,
in the notes that quote it as in the look-up. The history is the whole run, capped by tokens with the
oldest discards summarized first.

Driven through the REAL anthropic SDK against the local fake Messages API server, with the research
loop and the loop tests' fake sandbox.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents import AgentContext, AgentSettings, HistoryRow
from harness.agents.base import NOTES_LIMIT
from harness.agents.brief import history_table
from harness.records.chain import Ledger, verify
from tests.agent_fakes import FakeMessagesServer, tool_use_block
from tests.claude_loop import (
    INJECTION,
    MODEL,
    USAGE,
    agent,
    fake_server,
    first_user_text,
    proposal_requests,
    propose,
    results_of,
    run,
)
from tests.test_loop_fakes_honour_the_protocols import START


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    yield from fake_server(monkeypatch)


FENCE = re.compile(r"<untrusted-(?P<nonce>[0-9a-f]{16})>\n(?P<body>.*?)\n</untrusted-(?P=nonce)>", re.DOTALL)


def outside_fences(text: str) -> str:
    return FENCE.sub("", text)


def test_notes_reach_every_later_proposal_and_survive_a_resume(
    tmp_path: Path, server: FakeMessagesServer
) -> None:
    """Notes written with t0002 are in t0003's context and, after a resume, in t0004's; the row of the
    trial they were written for carries their hash, the file its text."""
    notes = "# notes\n- PAD_1 is inert: no effect on val_bpb\n"
    propose(server, "PAD_1 = 1", "PAD_1 = 11", "PAD_1 up", notes=notes)
    propose(server, "PAD_2 = 2", "PAD_2 = 22", "PAD_2 up")

    run(tmp_path, server, max_trials=2)
    propose(server, "PAD_3 = 3", "PAD_3 = 33", "PAD_3 up")
    run(tmp_path, server, max_trials=3)  # a new session on the same folder: a resume

    briefs = [first_user_text(body) for body in proposal_requests(server)]
    assert len(briefs) == 3
    assert "research notes are empty" in briefs[0]
    for brief in briefs[1:]:
        fenced = [m["body"] for m in FENCE.finditer(brief)]
        assert any(notes.strip() in body for body in fenced), "the notes are in the context, fenced"
        assert "PAD_1 is inert" not in outside_fences(brief)
        assert brief.index("research notes") < brief.index("Trials so far"), "notes come before the history"
    run_dir = tmp_path / "run"
    rows = {row["trial_id"]: row for row in Ledger(run_dir / "ledger.jsonl").rows()}
    assert rows["t0002"]["notes_sha256"] == hashlib.sha256(notes.encode()).hexdigest()
    assert "notes_sha256" not in rows["t0003"] and "notes_sha256" not in rows["t0004"]
    assert (run_dir / "notes" / "t0002.md").read_text(encoding="utf-8") == notes
    assert verify(run_dir).ok


def test_notes_over_the_cap_are_refused_with_an_error_and_the_old_ones_kept(
    server: FakeMessagesServer,
) -> None:
    too_long = "x" * (NOTES_LIMIT + 1)
    server.reply(
        tool_use_block("write_notes", {"content": too_long}, tool_id="toolu_long"),
        tool_use_block("str_replace", {"old_str": "PAD_1 = 1", "new_str": "PAD_1 = 5"}),
        usage=USAGE,
        model=MODEL,
    )
    server.reply(tool_use_block("finish", {"description": "PAD_1 5"}), usage=USAGE, model=MODEL)

    proposal = agent(server).propose(AgentContext(program="p", train_py=START, notes="old notes"))

    refused = results_of(server.message_requests()[1].body)["toolu_long"]
    assert refused["is_error"] is True
    assert str(NOTES_LIMIT) in refused["content"] and "NOT saved" in refused["content"]
    assert proposal.notes is None, "the notes stay as they were"
    assert proposal.train_py == START.replace("PAD_1 = 1", "PAD_1 = 5")


def test_view_trial_shows_the_diff_and_a_fenced_tail_and_refuses_unknown_ids(
    tmp_path: Path, server: FakeMessagesServer
) -> None:
    """t0002 prints an injection; t0003 looks it up and quotes it in its notes; t0004 reads the notes.
    The injection reaches the model only inside fences, and no path of the run folder ever does."""
    propose(server, "PAD_1 = 1", "PAD_1 = 1\nINJECT = 1", "print something")
    server.reply(
        tool_use_block("view_trial", {"trial_id": "t0002"}, tool_id="toolu_view"),
        tool_use_block("view_trial", {"trial_id": "t9999"}, tool_id="toolu_unknown"),
        tool_use_block("view_trial", {"trial_id": "../../etc/passwd"}, tool_id="toolu_path"),
        tool_use_block("view_trial", {"trial_id": "t0000"}, tool_id="toolu_baseline"),
        tool_use_block("write_notes", {"content": f"t0002's log said: {INJECTION}\n"}),
        tool_use_block("str_replace", {"old_str": "PAD_2 = 2", "new_str": "PAD_2 = 3"}),
        usage=USAGE,
        model=MODEL,
    )
    server.reply(tool_use_block("finish", {"description": "PAD_2 3"}), usage=USAGE, model=MODEL)
    propose(server, "PAD_3 = 3", "PAD_3 = 4", "PAD_3 4")

    run(tmp_path, server, max_trials=3)

    lookups = next(
        results_of(r.body) for r in server.message_requests() if "toolu_view" in results_of(r.body)
    )
    view = lookups["toolu_view"]
    assert not view.get("is_error")
    text = view["content"]
    assert "Trial t0002 (candidate)" in text and "decision discard" in text
    assert "+INJECT = 1" in text and "against its parent t0000" in text
    assert INJECTION in text and INJECTION not in outside_fences(text), "the log tail is fenced"
    assert str(tmp_path) not in json.dumps(lookups), "never a path"
    for bad in ("toolu_unknown", "toolu_path"):
        assert lookups[bad]["is_error"] is True and "no recorded trial" in lookups[bad]["content"]
    assert "No diff: this is a run of the starting train.py" in lookups["toolu_baseline"]["content"]

    last_brief = first_user_text(proposal_requests(server)[-1])
    assert INJECTION in last_brief, "the notes quoting it are in the context"
    assert INJECTION not in outside_fences(last_brief), "and stay fenced there"
    assert verify(tmp_path / "run").ok


def test_the_history_keeps_the_whole_run_and_summarizes_the_oldest_discards_first() -> None:
    rows = [
        HistoryRow(trial_id="t0000", status="ok", decision="baseline", val_bpb=1.0, description="baseline")
    ]
    rows += [
        HistoryRow(
            trial_id=f"t{i:04d}",
            status="ok",
            decision="keep" if i in (3, 40) else "discard",
            val_bpb=1.0 - i / 1000,
            delta=-i / 1000,
            description=f"idea number {i} " + "with words " * 5,
        )
        for i in range(1, 60)
    ]
    whole = history_table(rows, AgentSettings(history_tokens=100_000))
    assert all(f"| {r.trial_id} |" in whole for r in rows) and "the whole run" in whole

    capped = history_table(rows, AgentSettings(history_tokens=900))
    assert len(capped) // 4 <= 900
    assert "| t0003 | keep |" in capped and "| t0040 | keep |" in capped, "keeps outlast older discards"
    assert "| t0000 | baseline |" in capped
    assert "| t0059 | discard |" in capped, "the newest discards stay"
    assert "| t0001 | discard |" not in capped, "the oldest discard goes first"
    assert re.search(r"\| \(\d+ older\) \| \d+ discard \|", capped), "and is summarized, not dropped silently"
    assert "-0.059000" in capped, "each row carries its delta to the baseline"
