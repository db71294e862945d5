"""The Anthropic Messages API as the Claude agent uses it: the client, one retry layer, the usage tally.

Deliberate:
- One retry layer. The SDK client is built with max_retries=0 and tenacity retries here, on what a
  retry can fix: rate limits (honouring retry-after), overload (529), other 5xx, 408/409, connection
  errors and timeouts. With both layers on, every attempt of ours would hide up to three of the SDK's,
  unlogged, and our cap on waiting would not hold.
- Errors no retry can fix are never retried: 401/403/404 raise AgentFatal at once (a bad key stays
  bad; a retry storm would only burn the rate limit), other 4xx raise AgentError.
- Usage is summed over every call of a proposal and priced from settings.prices; after every call the
  per-proposal caps are checked (AgentCapReached).
- Cancellation by event. The sync SDK cannot abort a request, so with a cancel event the request runs
  in a daemon thread while the caller waits on both; once the event is set the caller raises
  AgentCancelled within POLL_S and abandons the request, which ends on its own (reply or timeout_s;
  a late reply is logged, not counted). Retry backoff waits on the event, not in time.sleep.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import anthropic
import tenacity
from anthropic.types import Message

from harness.agents.base import AgentCancelled, AgentCapReached, AgentError, AgentFatal, Usage
from harness.agents.config import AgentSettings
from harness.agents.tools import TOOLS

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often a request in flight looks at its cancel event
NO_KEY = (
    "ANTHROPIC_API_KEY is not set and no other Anthropic credentials were found: "
    "export it, or use --agent offline"
)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait the server asked for (retry-after-ms, retry-after in seconds or as a date), if any."""
    if not isinstance(exc, anthropic.APIStatusError):
        return None
    headers = exc.response.headers
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(headers.get("retry-after-ms", "")) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


RETRYABLE_STATUS = frozenset(
    {408, 409}
)  # request timeout, lock timeout (the SDK's own policy retries them too)


def is_transient(exc: BaseException) -> bool:
    """True for API failures a retry can fix: 429, 408, 409, 5xx (529 overload included), no connection."""
    if isinstance(exc, anthropic.APIStatusError):
        if exc.response.headers.get("x-should-retry") == "false":
            return False
        if isinstance(exc, anthropic.RateLimitError | anthropic.InternalServerError):
            return True
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, anthropic.APIConnectionError)  # APITimeoutError included


class _RetryWait(tenacity.wait.wait_base):
    """retry-after when the server sends it, else exponential backoff with jitter; both capped."""

    def __init__(self, base: float, cap: float) -> None:
        self.cap = cap
        self.backoff = tenacity.wait_exponential(multiplier=base, max=cap) + tenacity.wait_random(0, base)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        return min(hinted if hinted is not None else float(self.backoff(retry_state)), self.cap)


@dataclass
class Tally:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    calls: int = 0

    def add(self, message: Message) -> None:
        usage = message.usage
        self.calls += 1
        self.model = message.model or self.model
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_read += usage.cache_read_input_tokens or 0
        self.cache_write += usage.cache_creation_input_tokens or 0

    def usage(self, settings: AgentSettings) -> Usage:
        price = settings.price_for(self.model) or settings.price_for(settings.model)
        cost = 0.0
        if price is not None:
            cost = (
                self.input_tokens * price.input
                + self.output_tokens * price.output
                + self.cache_write * price.cache_write
                + self.cache_read * price.cache_read
            ) / 1e6
        return Usage(
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_input_tokens=self.cache_read,
            cache_creation_input_tokens=self.cache_write,
            cost_usd=cost,
            api_calls=self.calls,
        )

    def check_caps(self, settings: AgentSettings, what: str) -> None:
        """Raise AgentCapReached when this proposal has used more than a per-proposal cap allows."""
        usage = self.usage(settings)
        tokens = self.input_tokens + self.output_tokens + self.cache_read + self.cache_write
        cost_cap, token_cap = settings.max_cost_usd_per_proposal, settings.max_tokens_per_proposal
        if cost_cap is not None and usage.cost_usd > cost_cap:
            raise AgentCapReached(
                f"cap max_cost_usd_per_proposal reached: {what} cost ${usage.cost_usd:.4f} after "
                f"{self.calls} API calls (cap ${cost_cap:.4f})",
                cap="max_cost_usd_per_proposal",
                usage=usage,
            )
        if token_cap is not None and tokens > token_cap:
            raise AgentCapReached(
                f"cap max_tokens_per_proposal reached: {what} used {tokens} tokens after "
                f"{self.calls} API calls (cap {token_cap})",
                cap="max_tokens_per_proposal",
                usage=usage,
            )

    def check_cancel(self, cancel: threading.Event | None, settings: AgentSettings, what: str) -> None:
        """Raise AgentCancelled, with what the completed calls cost, when `cancel` is set."""
        if cancel is not None and cancel.is_set():
            raise AgentCancelled(
                f"{what} was cancelled after {self.calls} API calls", usage=self.usage(settings)
            )


def assistant_content(message: Message) -> list[dict[str, Any]]:
    """The reply as the next request's assistant turn."""
    content: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        else:
            content.append(block.model_dump(mode="json", exclude_none=True))
    return content or [{"type": "text", "text": "(empty reply)"}]


def _with_cache_breakpoint(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` whose last block carries a cache breakpoint (the originals stay unmarked)."""
    marked = list(messages)
    last = dict(marked[-1])
    blocks = [dict(block) for block in last["content"]]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    last["content"] = blocks
    marked[-1] = last
    return marked


def make_create(settings: AgentSettings) -> Callable[..., Message]:
    """`messages.create` of an SDK client with its own retries off; AgentFatal without credentials."""
    # max_retries=0: tenacity in `MessagesApi.call` is the only retry layer (see the module docstring).
    try:
        client = anthropic.Anthropic(
            base_url=settings.api_base_url, max_retries=0, timeout=settings.timeout_s
        )
    except anthropic.AnthropicError as exc:  # e.g. a credentials profile that cannot be loaded
        raise AgentFatal(f"{NO_KEY} ({exc})") from exc
    if client.api_key is None and client.auth_token is None and getattr(client, "credentials", None) is None:
        raise AgentFatal(NO_KEY)
    return client.messages.create


class MessagesApi:
    """One Messages API call with the retry policy, its failures turned into typed AgentErrors."""

    def __init__(self, settings: AgentSettings, create: Callable[..., Message]) -> None:
        self.settings = settings
        self._create = create

    def call(
        self,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tally: Tally,
        *,
        tools: list[dict[str, Any]] = TOOLS,
        cancel: threading.Event | None = None,
        what: str = "the proposal",
    ) -> Message:
        """The reply to one request, after retries; AgentCancelled once `cancel` is set (no request
        is sent after that, and one in flight is abandoned)."""
        settings = self.settings
        request: dict[str, Any] = {
            "model": settings.model,
            "max_tokens": settings.max_tokens,
            "system": system,
            "tools": tools,
            "messages": _with_cache_breakpoint(messages),
            "timeout": settings.timeout_s,
        }

        def attempt() -> Message:
            tally.check_cancel(cancel, settings, what)
            return self._send(request, cancel, tally, what)

        def nap(seconds: float) -> None:
            if cancel is None:
                time.sleep(seconds)
            else:
                cancel.wait(seconds)  # set: the next attempt raises AgentCancelled before sending

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(settings.retry_attempts),
            wait=_RetryWait(settings.retry_base_s, settings.retry_max_wait_s),
            sleep=nap,
            before_sleep=tenacity.before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except anthropic.AuthenticationError as exc:
            raise AgentFatal(
                f"ANTHROPIC_API_KEY is invalid (401 from the Anthropic API: {exc.message}); "
                "set a valid key, or run with --agent offline",
                usage=tally.usage(settings),
            ) from exc
        except anthropic.PermissionDeniedError as exc:
            raise AgentFatal(
                f"the API key may not use model {settings.model!r} (403: {exc.message}); "
                "check the key's permissions or set agent.model",
                usage=tally.usage(settings),
            ) from exc
        except anthropic.NotFoundError as exc:
            raise AgentFatal(
                f"model {settings.model!r} was not found (404: {exc.message}); set agent.model to a model "
                "your key can use",
                usage=tally.usage(settings),
            ) from exc
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            gave_up = f" after {settings.retry_attempts} attempts" if is_transient(exc) else ""
            status = f" {exc.status_code}" if isinstance(exc, anthropic.APIStatusError) else ""
            raise AgentError(
                f"Anthropic API error{status}{gave_up}: {exc.message}", usage=tally.usage(settings)
            ) from exc

    def _send(
        self, request: dict[str, Any], cancel: threading.Event | None, tally: Tally, what: str
    ) -> Message:
        """One request; AgentCancelled when `cancel` is set before its reply (the request is abandoned)."""
        if cancel is None:
            return self._create(**request)
        reply: Future[Message] = Future()

        def run() -> None:
            try:
                reply.set_result(self._create(**request))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
                reply.set_exception(exc)

        threading.Thread(target=run, name="anthropic-request", daemon=True).start()
        while not futures.wait([reply], timeout=POLL_S).done:
            if cancel.is_set() and not reply.done():
                reply.add_done_callback(_log_abandoned)
                raise AgentCancelled(
                    f"{what} was cancelled during API call {tally.calls + 1}",
                    usage=tally.usage(self.settings),
                )
        return reply.result()


def _log_abandoned(reply: Future[Message]) -> None:
    """A request abandoned on cancel has ended: what it cost is not in any proposal's usage."""
    error = reply.exception()
    if error is not None:
        logger.info("an API request abandoned on cancel ended with %s", type(error).__name__)
        return
    usage = reply.result().usage
    logger.warning(
        "an API request abandoned on cancel was answered later (%d input, %d output tokens): "
        "not counted in the run's spend",
        usage.input_tokens,
        usage.output_tokens,
    )
