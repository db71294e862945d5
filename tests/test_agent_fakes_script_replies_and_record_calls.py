"""The fakes other tests build on play exactly their script and record every call.

ScriptedAgent stands in for any agent in loop tests; FakeAnthropicClient stands in for the SDK client
in ClaudeAgent tests that need no HTTP. If a fake silently invented replies or dropped calls, the tests
built on it would pass for the wrong reason.
"""

from __future__ import annotations

import pytest

from harness.agents import AgentContext, AgentError, AgentExhausted, AgentFatal, AgentSettings, Proposal
from harness.agents.claude import ClaudeAgent
from tests.agent_fakes import FakeAnthropicClient, ScriptedAgent, message_json, tool_use_block


def context(index: int) -> AgentContext:
    return AgentContext(program="p", train_py="X = 1\n", trial_index=index)


def test_scripted_agent_plays_its_steps_in_order_and_records_contexts() -> None:
    first = Proposal(train_py="X = 2\n", description="two")
    agent = ScriptedAgent(
        [
            first,
            AgentError("flaky"),
            lambda ctx: Proposal(train_py="X = 3\n", description=str(ctx.trial_index)),
        ]
    )
    agent.add(AgentFatal("bad key"))

    assert agent.propose(context(0)) == first
    with pytest.raises(AgentError, match="flaky"):
        agent.propose(context(1))
    assert agent.propose(context(2)).description == "2"
    with pytest.raises(AgentFatal):
        agent.propose(context(3))
    with pytest.raises(AgentExhausted):
        agent.propose(context(4))
    assert [ctx.trial_index for ctx in agent.calls] == [0, 1, 2, 3, 4]


def test_fake_client_drives_the_claude_agent_and_records_each_request() -> None:
    client = FakeAnthropicClient(
        [
            message_json([tool_use_block("str_replace", {"old_str": "X = 1", "new_str": "X = 5"})]),
            message_json([tool_use_block("finish", {"description": "five"})], usage={"output_tokens": 9}),
        ]
    )
    agent = ClaudeAgent(AgentSettings(kind="claude"), client=client)

    proposal = agent.propose(context(0))

    assert (proposal.train_py, proposal.description) == ("X = 5\n", "five")
    assert proposal.usage.output_tokens == 5 + 9  # message_json's default usage, then the scripted one
    assert len(client.requests) == 2
    assert client.requests[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert client.requests[1]["messages"][-1]["content"][0]["type"] == "tool_result"
    with pytest.raises(AssertionError, match="no reply queued"):
        client.create(model="m", messages=[])
