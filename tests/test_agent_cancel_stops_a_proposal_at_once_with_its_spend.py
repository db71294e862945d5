"""A set cancel event stops a proposal at its next check, and AgentCancelled reports what it spent.

Through the real anthropic SDK against the local fake Messages API: an event set before `propose`
sends no request; set while a request is in flight (the server is slow), `propose` raises within 2 s
with the usage of the requests that completed; set during a retry's backoff, it stops at once instead
of sleeping out the wait; set by a tool step, the tools after it in the same reply (a `finish`
included) are not run. Offline and replay agents check it at entry and consume nothing. Without this,
Ctrl-C would wait for a slow API call or a minute-long backoff before a worker stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.agents import api
from harness.agents.base import AgentCancelled, AgentContext, AgentFatal, ProgramContext, TrialLookup
from harness.agents.offline import OfflineAgent
from harness.agents.replay import ReplayAgent
from tests.agent_fakes import FakeMessagesServer, tool_use_block
from tests.claude_loop import CALL_COST, MODEL, PROGRAM, USAGE, agent, fake_server

TRAIN_PY = (Path(__file__).resolve().parents[1] / "train.py").read_text()
PROMPT = 2.0  # seconds from the event being set to AgentCancelled


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    yield from fake_server(monkeypatch)


def context(**fields: object) -> AgentContext:
    return AgentContext.model_validate(
        {"program": "Lower val_bpb.", "train_py": TRAIN_PY, "trial_index": 3} | fields
    )


def set_when(cancel: threading.Event, ready: Callable[[], bool]) -> list[float]:
    """Set `cancel` (from another thread) once `ready()`; the list receives the monotonic time it was set."""
    when: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        when.append(time.monotonic())
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    return when


def edit() -> dict[str, object]:
    return tool_use_block("rewrite_file", {"content": TRAIN_PY + "\n# edit\n"})


def test_a_cancel_set_before_propose_sends_no_request(server: FakeMessagesServer) -> None:
    server.reply(edit(), usage=USAGE, model=MODEL)
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(AgentCancelled, match="trial 3 was cancelled") as caught:
        agent(server).propose(context(), cancel)

    assert server.message_requests() == []
    assert caught.value.usage is not None and caught.value.usage.api_calls == 0


def test_a_cancel_cuts_a_slow_request_and_reports_the_completed_ones(server: FakeMessagesServer) -> None:
    server.reply(edit(), usage=USAGE, model=MODEL)
    server.reply(tool_use_block("finish", {"description": "late"}), usage=USAGE, model=MODEL, delay_s=30)
    cancel = threading.Event()
    set_at = set_when(cancel, lambda: len(server.message_requests()) == 2)

    with pytest.raises(AgentCancelled, match="during API call 2") as caught:
        agent(server).propose(context(), cancel)

    assert time.monotonic() - set_at[0] < PROMPT
    usage = caught.value.usage
    assert usage is not None and usage.api_calls == 1  # the first reply, not the abandoned second
    assert usage.input_tokens == USAGE["input_tokens"]
    assert usage.cost_usd == pytest.approx(CALL_COST)


class _BackoffStarts(logging.Handler):
    """Sets `started` when the API layer logs that it is about to wait before a retry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.started = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying"):
            self.started.set()


def test_a_cancel_during_a_retry_backoff_stops_at_once(server: FakeMessagesServer) -> None:
    server.error(529, "overloaded_error", "Overloaded")
    server.reply(tool_use_block("finish", {"description": "never asked for"}), usage=USAGE, model=MODEL)
    cancel = threading.Event()
    backoff = _BackoffStarts()
    logging.getLogger(api.__name__).addHandler(backoff)
    set_at = set_when(cancel, backoff.started.is_set)  # after the 529 came back: during the wait

    try:
        with pytest.raises(AgentCancelled) as caught:  # the backoff alone would wait 30 s or more
            agent(server, retry_base_s=30.0, retry_max_wait_s=60.0).propose(context(), cancel)
    finally:
        logging.getLogger(api.__name__).removeHandler(backoff)

    assert time.monotonic() - set_at[0] < PROMPT
    assert len(server.message_requests()) == 1  # no attempt after the backoff was cut
    assert caught.value.usage is not None and caught.value.usage.api_calls == 0


def test_a_cancel_set_during_a_tool_step_runs_no_later_step(server: FakeMessagesServer) -> None:
    cancel = threading.Event()

    def look_up(trial_id: str) -> TrialLookup | None:
        cancel.set()  # the operator pressed Ctrl-C while this tool ran
        return None

    view = tool_use_block("view_trial", {"trial_id": "t0001"})
    server.reply(
        view, edit(), tool_use_block("finish", {"description": "too late"}), usage=USAGE, model=MODEL
    )

    with pytest.raises(AgentCancelled, match="after 1 API calls") as caught:
        agent(server).propose(context(view_trial=look_up), cancel)

    assert len(server.message_requests()) == 1
    assert caught.value.usage is not None and caught.value.usage.api_calls == 1


def test_an_unset_event_changes_nothing_and_errors_still_surface(server: FakeMessagesServer) -> None:
    server.error(529, "overloaded_error", "Overloaded")
    server.reply(edit(), usage=USAGE, model=MODEL)
    server.reply(tool_use_block("finish", {"description": "an edit"}), usage=USAGE, model=MODEL)
    server.error(401, "authentication_error", "invalid x-api-key")
    claude = agent(server)

    proposal = claude.propose(context(), threading.Event())
    assert proposal.description == "an edit"
    assert proposal.usage.api_calls == 2
    assert proposal.usage.cost_usd == pytest.approx(2 * CALL_COST)
    with pytest.raises(AgentFatal, match="ANTHROPIC_API_KEY is invalid"):
        claude.propose(context(), threading.Event())
    assert len(server.message_requests()) == 4


def test_a_cancelled_program_proposal_sends_no_request(server: FakeMessagesServer) -> None:
    server.reply(tool_use_block("propose_guidance", {"guidance": "x", "description": "y"}), model=MODEL)
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(AgentCancelled, match="program-evolution proposal was cancelled"):
        agent(server).propose_program(ProgramContext(program=PROGRAM, guidance="Try the lr."), cancel)

    assert server.message_requests() == []


def test_offline_and_replay_agents_check_the_event_at_entry(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(TRAIN_PY, encoding="utf-8")
    replay = ReplayAgent(tmp_path)
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(AgentCancelled):
        OfflineAgent().propose(context(), cancel)
    with pytest.raises(AgentCancelled):
        replay.propose(context(trial_index=0), cancel)

    assert replay.remaining == 1  # the cancelled call consumed no file
    assert replay.propose(context(trial_index=0), threading.Event()).train_py == TRAIN_PY
