"""Scripted fakes for tests: no network, no key, every call recorded.

- `ScriptedAgent`: an Agent that plays a queue of steps (a Proposal, an exception to raise, or a
  function of the context), records every AgentContext it was given, and raises AgentExhausted when
  the script is done. For testing the loop without any model.
- `FakeAnthropicClient`: an in-process stand-in for `anthropic.Anthropic` (`client.messages.create`)
  that returns queued Messages, raises queued exceptions and records the keyword arguments; pass it to
  `ClaudeAgent(settings, client=...)`.
- `FakeMessagesServer`: a local HTTP server speaking the Messages API's JSON (`POST /v1/messages`),
  for driving the REAL SDK, so retries, status codes and headers go through the code that production
  runs. It replies from a queue, each reply after an optional delay (a slow API, to cancel into);
  with the queue empty it answers 400 (never retried), so a test that asks for more than it scripted
  fails fast instead of retrying.

`text_block`, `tool_use_block` and `message_json` build the reply bodies both fakes use.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from anthropic.types import Message

from harness.agents.base import AgentContext, AgentExhausted, Proposal, raise_if_cancelled

logger = logging.getLogger(__name__)

Step = Proposal | BaseException | Callable[[AgentContext], Proposal]
_ids = itertools.count(1)


class ScriptedAgent:
    """Plays `script` one step per `propose`; records the contexts in `calls`. A set cancel event
    raises AgentCancelled at entry, as the real agents do, and consumes no step."""

    name = "scripted"

    def __init__(self, script: Iterable[Step] = ()) -> None:
        self._script: deque[Step] = deque(script)
        self.calls: list[AgentContext] = []

    def add(self, *steps: Step) -> None:
        self._script.extend(steps)

    def propose(self, ctx: AgentContext, cancel: threading.Event | None = None) -> Proposal:
        raise_if_cancelled(cancel, f"the proposal for trial {ctx.trial_index}")
        self.calls.append(ctx)
        if not self._script:
            raise AgentExhausted(f"the script is done after {len(self.calls) - 1} proposals")
        step = self._script.popleft()
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Proposal):
            return step
        return step(ctx)


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, tool_input: Any, *, tool_id: str | None = None) -> dict[str, Any]:
    """A tool_use block; `tool_input` is sent as given, so malformed inputs can be scripted too."""
    return {
        "type": "tool_use",
        "id": tool_id or f"toolu_fake_{next(_ids)}",
        "name": name,
        "input": tool_input,
    }


def message_json(
    content: list[dict[str, Any]],
    *,
    stop_reason: str | None = None,
    usage: dict[str, int] | None = None,
    model: str = "claude-fake",
) -> dict[str, Any]:
    """A Messages API response body. stop_reason defaults to tool_use if a block is one, else end_turn."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
    return {
        "id": f"msg_fake_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **(usage or {}),
        },
    }


class FakeAnthropicClient:
    """`client.messages.create(**kwargs)` returns the queued replies in order and records `kwargs`."""

    def __init__(self, replies: Iterable[Message | dict[str, Any] | BaseException] = ()) -> None:
        self._replies: deque[Message | dict[str, Any] | BaseException] = deque(replies)
        self.requests: list[dict[str, Any]] = []
        self.messages = self

    def add(self, *replies: Message | dict[str, Any] | BaseException) -> None:
        self._replies.extend(replies)

    def create(self, **kwargs: Any) -> Message:
        self.requests.append(copy.deepcopy(kwargs))
        if not self._replies:
            raise AssertionError(f"FakeAnthropicClient: no reply queued for request {len(self.requests)}")
        reply = self._replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        return reply if isinstance(reply, Message) else Message.model_validate(reply)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the decoded JSON


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    delay_s: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeMessagesServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.fake._take(RecordedRequest("POST", self.path, headers, body))
        if self.server.fake._closing.wait(reply.delay_s):
            return  # the server is shutting down: drop the connection unanswered
        payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", f"req_fake_{next(_ids)}")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake messages server: " + format, *args)


class FakeMessagesServer:
    """A Messages API on 127.0.0.1 that answers from a queue. Use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: deque[_Reply] = deque()
        self._closing = threading.Event()
        self.requests: list[RecordedRequest] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-messages",
            daemon=True,
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeMessagesServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def enqueue(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        delay_s: float = 0.0,
    ) -> None:
        """Queue a reply, sent `delay_s` after its request arrives."""
        with self._lock:
            self._replies.append(_Reply(status, body, dict(headers or {}), delay_s))

    def reply(
        self,
        *content: dict[str, Any],
        stop_reason: str | None = None,
        usage: dict[str, int] | None = None,
        model: str = "claude-fake",
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Queue a 200 Message made of `content` blocks."""
        body = message_json(list(content), stop_reason=stop_reason, usage=usage, model=model)
        self.enqueue(200, body, headers, delay_s=delay_s)

    def error(
        self,
        status: int,
        error_type: str,
        message: str = "scripted error",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue an API error (e.g. 429 rate_limit_error, 529 overloaded_error, 401 authentication_error)."""
        self.enqueue(status, {"type": "error", "error": {"type": error_type, "message": message}}, headers)

    def message_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages"]

    def _take(self, request: RecordedRequest) -> _Reply:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
        return _Reply(
            400,
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "fake server: no reply queued"},
            },
            {},
        )
