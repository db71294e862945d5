"""ClaudeAgent: a tool-use edit loop over train.py through the anthropic SDK.

The model gets program.md as its system prompt and, as the user turn, the recent history, the best
val_bpb, the last verdict with its log tail (fenced as untrusted data) and the current train.py. It
edits through four tools (`tools.py`) that act on an in-memory copy of train.py and nothing else:
`view_file`, `str_replace`, `rewrite_file`, `finish`. No tool takes a path: no other file exists for it.

Deliberate:
- One retry layer. The SDK client is built with max_retries=0 and tenacity retries here, on what a
  retry can fix: rate limits (honouring retry-after), overload (529), other 5xx, 408/409, connection
  errors and timeouts. With both layers on, every attempt of ours would hide up to three of the SDK's,
  unlogged, and our cap on waiting would not hold.
- Errors no retry can fix are never retried: 401/403/404 raise AgentFatal at once (a bad key stays
  bad; a retry storm would only burn the rate limit), other 4xx raise AgentError.
- A malformed tool call (unknown tool, missing or extra fields, wrong types) is answered with an
  is_error tool_result the model can act on, never an exception; so is an edit that does not apply.
  `finish` is refused while train.py does not parse or is unchanged.
- Prompt caching: program.md (and the tools before it) carry a cache breakpoint, and so does the
  newest turn, so each call of the edit loop re-reads the conversation so far from the cache.
- Usage is summed over every call of a proposal and priced from settings.prices; a proposal that
  fails still reports what it cost (AgentError.usage).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import tenacity
from anthropic.types import Message

from harness.agents.base import (
    AgentContext,
    AgentError,
    AgentFatal,
    Proposal,
    Usage,
    fence_untrusted,
)
from harness.agents.config import AgentSettings
from harness.agents.tools import TOOLS, Finished, ToolError, Workspace, tool_result

logger = logging.getLogger(__name__)

REASON_LIMIT = 1_000
HISTORY_DESCRIPTION_LIMIT = 160
NO_KEY = (
    "ANTHROPIC_API_KEY is not set and no other Anthropic credentials were found: "
    "export it, or use --agent offline"
)

FALLBACK_PROGRAM = (
    "You are an autonomous ML researcher. You improve train.py, a single-file GPT training script that "
    "trains for a fixed wall-clock budget; a trusted evaluator then scores the exported model by "
    "validation bits per byte (val_bpb, lower is better). Make one focused change per trial."
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
class _Tally:
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


def _assistant_content(message: Message) -> list[dict[str, Any]]:
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


class ClaudeAgent:
    """Proposes by letting a Claude model edit train.py through tools."""

    name = "claude"

    def __init__(self, settings: AgentSettings, *, client: Any | None = None) -> None:
        self.settings = settings
        if client is None:
            # max_retries=0: tenacity in `_call` is the only retry layer (see the module docstring).
            try:
                client = anthropic.Anthropic(
                    base_url=settings.api_base_url, max_retries=0, timeout=settings.timeout_s
                )
            except anthropic.AnthropicError as exc:  # e.g. a credentials profile that cannot be loaded
                raise AgentFatal(f"{NO_KEY} ({exc})") from exc
            if (
                client.api_key is None
                and client.auth_token is None
                and getattr(client, "credentials", None) is None
            ):
                raise AgentFatal(NO_KEY)
        self._create: Callable[..., Message] = client.messages.create
        if settings.price_for(settings.model) is None:
            logger.warning(
                "no price for model %r in agent.prices: its cost will be recorded as 0 USD", settings.model
            )

    def propose(self, ctx: AgentContext) -> Proposal:
        settings = self.settings
        system = [
            {
                "type": "text",
                "text": ctx.program.strip() or FALLBACK_PROGRAM,
                "cache_control": {"type": "ephemeral"},
            }
        ]
        if not ctx.program.strip():
            logger.warning("program.md is empty; using the built-in research instructions")
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": brief(ctx, settings)}]}
        ]
        workspace = Workspace(ctx.train_py)
        tally = _Tally(model=settings.model)
        for turn in range(1, settings.max_edit_turns + 1):
            message = self._call(system, messages, tally)
            tally.add(message)
            messages.append({"role": "assistant", "content": _assistant_content(message)})
            if message.stop_reason in ("refusal", "model_context_window_exceeded"):
                raise AgentError(f"the model stopped with {message.stop_reason}", usage=tally.usage(settings))
            results: list[dict[str, Any]] = []
            tool_uses = [block for block in message.content if block.type == "tool_use"]
            for block in tool_uses:
                if message.stop_reason == "max_tokens":
                    results.append(
                        tool_result(
                            block.id,
                            "Your reply hit max_tokens before this call was complete; "
                            "it was not applied. Make smaller edits with str_replace.",
                            error=True,
                        )
                    )
                    continue
                try:
                    outcome = workspace.run(block.name, block.input)
                except ToolError as exc:
                    logger.debug("tool %s refused: %s", block.name, exc)
                    results.append(tool_result(block.id, str(exc), error=True))
                    continue
                if isinstance(outcome, Finished):
                    usage = tally.usage(settings)
                    logger.info(
                        "claude proposal for trial %d after %d calls: %s (%d in, %d out, %d cached, $%.4f)",
                        ctx.trial_index,
                        usage.api_calls,
                        outcome.description,
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cache_read_input_tokens,
                        usage.cost_usd,
                    )
                    return Proposal(train_py=workspace.text, description=outcome.description, usage=usage)
                results.append(tool_result(block.id, outcome))
            if not tool_uses:
                cut = "Your reply hit max_tokens. " if message.stop_reason == "max_tokens" else ""
                results.append(
                    {"type": "text", "text": f"{cut}Use the tools: edit train.py, then call finish."}
                )
            if settings.max_edit_turns - turn == 1:
                results.append({"type": "text", "text": "This is your last turn: call finish now."})
            messages.append({"role": "user", "content": results})
        raise AgentError(
            f"the model did not finish within {settings.max_edit_turns} turns", usage=tally.usage(settings)
        )

    def _call(self, system: list[dict[str, Any]], messages: list[dict[str, Any]], tally: _Tally) -> Message:
        settings = self.settings
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(settings.retry_attempts),
            wait=_RetryWait(settings.retry_base_s, settings.retry_max_wait_s),
            before_sleep=tenacity.before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(
                self._create,
                model=settings.model,
                max_tokens=settings.max_tokens,
                system=system,
                tools=TOOLS,
                messages=_with_cache_breakpoint(messages),
                timeout=settings.timeout_s,
            )
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


def brief(ctx: AgentContext, settings: AgentSettings) -> str:
    """The user turn: history, best score, the last verdict (untrusted parts fenced), train.py, the task."""
    parts = [
        f"Trial {ctx.trial_index} of an autoresearch run on the {ctx.profile!r} profile. Lower val_bpb is better."
    ]
    best = f"{ctx.best_val_bpb:.6f}" if ctx.best_val_bpb is not None else "not measured yet"
    parts.append(f"Best val_bpb so far: {best}. The train.py below is the one that scored it.")
    rows = ctx.history[-settings.history_rows :] if settings.history_rows else ()
    if rows:
        table = ["| trial | status | decision | val_bpb | description |", "|---|---|---|---|---|"]
        for row in rows:
            bpb = f"{row.val_bpb:.6f}" if row.val_bpb is not None else "-"
            text = " ".join(row.description.split()).replace("|", "/")[:HISTORY_DESCRIPTION_LIMIT]
            table.append(f"| {row.trial_id} | {row.status} | {row.decision} | {bpb} | {text} |")
        shown = f"the last {len(rows)} of {len(ctx.history)}" if len(rows) < len(ctx.history) else "all"
        parts.append(f"Trials so far ({shown}, oldest first):\n" + "\n".join(table))
    if ctx.last is not None:
        last = ctx.last
        bpb = f"{last.val_bpb:.6f}" if last.val_bpb is not None else "-"
        parts.append(
            f"Last trial {last.trial_id}: status {last.status}, decision {last.decision}, val_bpb {bpb}."
        )
        if last.reason:
            parts.append(
                fence_untrusted(
                    last.reason, limit=REASON_LIMIT, label="the sandbox's reason for that verdict"
                )
            )
        parts.append(
            fence_untrusted(last.log_tail or "(no output)", label="the tail of that trial's train.py output")
        )
    parts.append(f'Current train.py:\n<file name="train.py">\n{ctx.train_py}\n</file>')
    parts.append(
        "Make one focused change that you expect to lower val_bpb within the time budget: edit train.py "
        "with str_replace (rewrite_file only for sweeping changes), then call finish with a one-line "
        "description. train.py is the only file you can see or change."
    )
    return "\n\n".join(parts)
