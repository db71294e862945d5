"""API failures a retry can fix are retried; the others stop at once, with a typed error.

Through the real anthropic SDK against a local server: a 429 is retried after the server's retry-after
(not after our own, longer backoff); a 529 overload and a 500 are retried with backoff; a bad key (401)
raises AgentFatal after exactly one request, so an overnight run with a bad key stops instead of
hammering the API; 403/404 are fatal too; another 4xx is an AgentError without a retry; retries stop
after the configured attempts. The SDK's own retry layer is off, so the server sees every attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.agents import AgentContext, AgentError, AgentFatal, AgentSettings, make_agent
from harness.agents.claude import ClaudeAgent
from tests.agent_fakes import FakeMessagesServer, tool_use_block

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


def queue_a_good_edit(server: FakeMessagesServer) -> None:
    server.reply(tool_use_block("rewrite_file", {"content": TRAIN_PY + "\n# edit\n"}))
    server.reply(tool_use_block("finish", {"description": "edit"}))


def context() -> AgentContext:
    return AgentContext(program="Lower val_bpb.", train_py=TRAIN_PY)


def test_a_429_is_retried_after_the_servers_retry_after(server: FakeMessagesServer) -> None:
    server.error(429, "rate_limit_error", "slow down", headers={"retry-after": "0"})
    queue_a_good_edit(server)
    # Our own backoff would wait 20 s: finishing fast proves the server's retry-after: 0 was used.
    agent = make(server, retry_base_s=20.0, retry_max_wait_s=60.0)

    started = time.monotonic()
    proposal = agent.propose(context())

    assert time.monotonic() - started < 10.0
    assert proposal.description == "edit"
    assert len(server.message_requests()) == 3  # the 429, then the two calls of the edit loop
    assert proposal.usage.api_calls == 2  # a refused attempt is not a billed call


def test_an_overloaded_529_is_retried_with_backoff(server: FakeMessagesServer) -> None:
    server.error(529, "overloaded_error", "Overloaded")
    server.error(500, "api_error", "Internal server error")
    queue_a_good_edit(server)

    proposal = make(server).propose(context())

    assert proposal.description == "edit"
    assert len(server.message_requests()) == 4


def test_an_invalid_key_is_fatal_after_exactly_one_request(server: FakeMessagesServer) -> None:
    server.error(401, "authentication_error", "invalid x-api-key")
    queue_a_good_edit(server)  # a retry would get these and succeed: the test would then fail

    with pytest.raises(AgentFatal, match="ANTHROPIC_API_KEY is invalid"):
        make(server).propose(context())

    assert len(server.message_requests()) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "fragment"),
    [(403, "permission_error", "may not use model"), (404, "not_found_error", "was not found")],
)
def test_permission_and_unknown_model_errors_are_fatal_without_retry(
    server: FakeMessagesServer, status: int, error_type: str, fragment: str
) -> None:
    server.error(status, error_type, "no")
    queue_a_good_edit(server)

    with pytest.raises(AgentFatal, match=fragment):
        make(server).propose(context())

    assert len(server.message_requests()) == 1


def test_a_bad_request_is_an_agent_error_without_retry(server: FakeMessagesServer) -> None:
    server.error(400, "invalid_request_error", "prompt is too long")
    queue_a_good_edit(server)

    with pytest.raises(AgentError) as caught:
        make(server).propose(context())

    assert not isinstance(caught.value, AgentFatal)
    assert "400" in str(caught.value)
    assert len(server.message_requests()) == 1


def test_retries_stop_after_the_configured_attempts(server: FakeMessagesServer) -> None:
    for _ in range(3):
        server.error(529, "overloaded_error", "Overloaded")
    queue_a_good_edit(server)

    with pytest.raises(AgentError) as caught:
        make(server, retry_attempts=3).propose(context())

    assert not isinstance(caught.value, AgentFatal)
    assert "after 3 attempts" in str(caught.value)
    assert len(server.message_requests()) == 3


def test_a_server_that_forbids_retrying_is_not_retried(server: FakeMessagesServer) -> None:
    server.error(529, "overloaded_error", "Overloaded", headers={"x-should-retry": "false"})
    queue_a_good_edit(server)

    with pytest.raises(AgentError):
        make(server).propose(context())

    assert len(server.message_requests()) == 1


def test_an_unreachable_api_is_an_agent_error_after_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeMessagesServer() as fake:
        dead_url = fake.base_url  # nothing listens there once the server is closed
    agent = ClaudeAgent(
        AgentSettings(kind="claude", api_base_url=dead_url, retry_attempts=2, retry_base_s=0.01, timeout_s=5)
    )

    with pytest.raises(AgentError, match="after 2 attempts") as caught:
        agent.propose(context())

    assert not isinstance(caught.value, AgentFatal)


def test_a_missing_key_is_fatal_when_the_agent_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_PROFILE",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # no credentials profile on disk either

    with pytest.raises(AgentFatal, match="ANTHROPIC_API_KEY is not set"):
        make_agent("claude", AgentSettings(kind="claude"))
