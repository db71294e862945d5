"""The Claude agent edits train.py, and only train.py, through tools; what it submits parses and changed.

Driven through the REAL anthropic SDK against a local Messages API server (no network, no key): a
str_replace lands in the proposal and `finish` supplies its description; malformed tool calls get
is_error tool_results the model can act on, not a crash; `finish` is refused while train.py does not
parse or is unchanged; the turn budget is enforced; program.md goes out as a cached system block; token
usage and cost are summed over every call of a proposal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.agents import AgentContext, AgentError, AgentSettings, ModelPrice
from harness.agents.claude import ClaudeAgent
from harness.agents.tools import TOOLS
from tests.agent_fakes import FakeMessagesServer, text_block, tool_use_block

TRAIN_PY = (Path(__file__).resolve().parents[1] / "train.py").read_text()
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    for var in (*PROXY_VARS, "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    with FakeMessagesServer() as fake:
        yield fake


def make(server: FakeMessagesServer, **overrides: Any) -> ClaudeAgent:
    options: dict[str, Any] = {"kind": "claude", "api_base_url": server.base_url, "retry_base_s": 0.01}
    return ClaudeAgent(AgentSettings(**(options | overrides)))


def context(**overrides: Any) -> AgentContext:
    return AgentContext(**({"program": "# program.md\nLower val_bpb.", "train_py": TRAIN_PY} | overrides))


def first_line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def tool_results(request_body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """tool_use_id -> tool_result block, from the newest user message of a request."""
    last = request_body["messages"][-1]
    assert last["role"] == "user"
    return {b["tool_use_id"]: b for b in last["content"] if b["type"] == "tool_result"}


def test_a_str_replace_lands_in_the_proposal_and_finish_gives_its_description(
    server: FakeMessagesServer,
) -> None:
    old_line = first_line_with(TRAIN_PY, "MATRIX_LR =")
    new_line = old_line.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05", 1)
    assert new_line != old_line, "the test expects train.py to set MATRIX_LR = 0.04"
    server.reply(
        text_block("Raising the Muon LR."),
        tool_use_block("str_replace", {"old_str": old_line, "new_str": new_line}, tool_id="toolu_edit"),
    )
    server.reply(
        tool_use_block("finish", {"description": "raise MATRIX_LR 0.04 -> 0.05\n(second line dropped)"})
    )
    ctx = context()

    proposal = make(server).propose(ctx)

    assert proposal.train_py == TRAIN_PY.replace(old_line, new_line)
    assert proposal.description == "raise MATRIX_LR 0.04 -> 0.05"
    assert ctx.train_py == TRAIN_PY  # the context is not edited in place
    requests = server.message_requests()
    assert len(requests) == 2
    edit_result = tool_results(requests[1].body)["toolu_edit"]
    assert not edit_result.get("is_error")
    assert "MATRIX_LR = 0.05" in edit_result["content"]


def test_the_model_is_offered_only_train_py_tools_without_any_path(server: FakeMessagesServer) -> None:
    server.reply(tool_use_block("rewrite_file", {"content": TRAIN_PY + "\n# tweak\n"}))
    server.reply(tool_use_block("finish", {"description": "comment"}))

    make(server).propose(context())

    tools = server.message_requests()[0].body["tools"]
    assert sorted(t["name"] for t in tools) == [
        "finish",
        "rewrite_file",
        "str_replace",
        "view_file",
        "view_trial",  # read-only look-up of a recorded trial, by id
        "write_notes",  # the agent's own notebook, not a file
    ]
    assert tools == json.loads(json.dumps(TOOLS))
    for tool in tools:
        assert "path" not in tool["input_schema"].get("properties", {}), tool["name"]


def test_malformed_tool_calls_get_error_results_and_a_later_valid_edit_succeeds(
    server: FakeMessagesServer,
) -> None:
    old_line = first_line_with(TRAIN_PY, "WARMDOWN_RATIO =")
    server.reply(
        tool_use_block("delete_file", {"path": "prepare.py"}, tool_id="toolu_unknown"),
        tool_use_block("str_replace", {"old_str": old_line}, tool_id="toolu_missing"),
        tool_use_block("str_replace", {"old_str": 5, "new_str": "x"}, tool_id="toolu_type"),
        tool_use_block("rewrite_file", {"content": "x = 1\n", "path": "prepare.py"}, tool_id="toolu_extra"),
        tool_use_block("str_replace", {"old_str": "no such text", "new_str": "x"}, tool_id="toolu_absent"),
        tool_use_block("str_replace", {"old_str": "import", "new_str": "x"}, tool_id="toolu_ambiguous"),
    )
    server.reply(
        tool_use_block("str_replace", {"old_str": old_line, "new_str": old_line.replace("0.5", "0.6", 1)})
    )
    server.reply(tool_use_block("finish", {"description": "longer warmdown"}))

    proposal = make(server).propose(context())

    results = tool_results(server.message_requests()[1].body)
    assert set(results) == {
        "toolu_unknown",
        "toolu_missing",
        "toolu_type",
        "toolu_extra",
        "toolu_absent",
        "toolu_ambiguous",
    }
    assert all(r.get("is_error") is True for r in results.values())
    assert "unknown tool 'delete_file'" in results["toolu_unknown"]["content"]
    assert "new_str" in results["toolu_missing"]["content"]
    assert "old_str" in results["toolu_type"]["content"]
    assert "path" in results["toolu_extra"]["content"]
    assert "not found" in results["toolu_absent"]["content"]
    assert "occurs" in results["toolu_ambiguous"]["content"]
    assert proposal.train_py == TRAIN_PY.replace(old_line, old_line.replace("0.5", "0.6", 1))
    assert "x = 1" not in proposal.train_py  # the call with a stray path was not applied


def test_finish_is_refused_while_train_py_does_not_parse_or_is_unchanged(server: FakeMessagesServer) -> None:
    server.reply(tool_use_block("finish", {"description": "nothing"}, tool_id="toolu_unchanged"))
    server.reply(tool_use_block("rewrite_file", {"content": "def broken(:\n"}, tool_id="toolu_broken"))
    server.reply(tool_use_block("finish", {"description": "broken"}, tool_id="toolu_refused"))
    server.reply(tool_use_block("rewrite_file", {"content": TRAIN_PY + "\nFIXED = 1\n"}))
    server.reply(tool_use_block("finish", {"description": "fixed"}))

    proposal = make(server).propose(context())

    requests = server.message_requests()
    unchanged = tool_results(requests[1].body)["toolu_unchanged"]
    assert unchanged["is_error"] is True and "unchanged" in unchanged["content"]
    assert "does not parse" in tool_results(requests[2].body)["toolu_broken"]["content"]
    refused = tool_results(requests[3].body)["toolu_refused"]
    assert refused["is_error"] is True and "SyntaxError" in refused["content"]
    assert proposal.description == "fixed"
    assert proposal.train_py.endswith("\nFIXED = 1\n")


def test_the_turn_budget_ends_a_proposal_with_an_agent_error_that_carries_its_usage(
    server: FakeMessagesServer,
) -> None:
    for _ in range(3):
        server.reply(tool_use_block("view_file", {}), usage={"input_tokens": 7, "output_tokens": 3})

    with pytest.raises(AgentError) as caught:
        make(server, max_edit_turns=3).propose(context())

    assert len(server.message_requests()) == 3
    assert caught.value.usage is not None
    assert (caught.value.usage.api_calls, caught.value.usage.input_tokens) == (3, 21)
    last_user = server.message_requests()[2].body["messages"][-1]["content"]
    assert any(b["type"] == "text" and "last turn" in b["text"] for b in last_user)
    view = tool_results(server.message_requests()[1].body)
    assert any(first_line_with(TRAIN_PY, "MATRIX_LR =") in r["content"] for r in view.values())


def test_program_md_is_a_cached_system_block_and_the_newest_turn_carries_a_breakpoint(
    server: FakeMessagesServer,
) -> None:
    server.reply(tool_use_block("view_file", {}))
    server.reply(tool_use_block("rewrite_file", {"content": TRAIN_PY + "\n# x\n"}))
    server.reply(tool_use_block("finish", {"description": "x"}))
    ctx = context()

    make(server).propose(ctx)

    for request in server.message_requests():
        body = request.body
        assert body["system"] == [
            {"type": "text", "text": ctx.program, "cache_control": {"type": "ephemeral"}}
        ]
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert json.dumps(body).count('"cache_control"') == 2  # the API allows at most 4 breakpoints
        sent = (request.headers.get("x-api-key"), request.headers.get("authorization"))
        assert "sk-ant-test-key" in sent or "Bearer sk-ant-test-key" in sent  # the key from the environment


def test_usage_is_summed_over_the_calls_of_a_proposal_and_priced_from_the_table(
    server: FakeMessagesServer,
) -> None:
    calls = [
        {
            "input_tokens": 1200,
            "output_tokens": 80,
            "cache_creation_input_tokens": 3000,
            "cache_read_input_tokens": 0,
        },
        {
            "input_tokens": 300,
            "output_tokens": 40,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 3500,
        },
    ]
    server.reply(
        tool_use_block("rewrite_file", {"content": TRAIN_PY + "\n# y\n"}), usage=calls[0], model="claude-test"
    )
    server.reply(tool_use_block("finish", {"description": "y"}), usage=calls[1], model="claude-test")
    price = ModelPrice(input=2.0, output=11.0, cache_write=2.5, cache_read=0.2)

    proposal = make(server, model="claude-test", prices={"claude-test": price}).propose(context())

    usage = proposal.usage
    totals = {key: sum(call[key] for call in calls) for key in calls[0]}
    assert usage.model == "claude-test"
    assert usage.api_calls == 2
    assert usage.input_tokens == totals["input_tokens"]
    assert usage.output_tokens == totals["output_tokens"]
    assert usage.cache_creation_input_tokens == totals["cache_creation_input_tokens"]
    assert usage.cache_read_input_tokens == totals["cache_read_input_tokens"]
    expected = (
        totals["input_tokens"] * price.input
        + totals["output_tokens"] * price.output
        + totals["cache_creation_input_tokens"] * price.cache_write
        + totals["cache_read_input_tokens"] * price.cache_read
    ) / 1e6
    assert usage.cost_usd == pytest.approx(expected)
