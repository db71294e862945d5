"""ClaudeAgent: a tool-use edit loop over train.py through the anthropic SDK.

The model gets program.md as its system prompt and, as the user turn, its research notes (fenced:
they may quote untrusted logs), the run's history in compact form, the best val_bpb, the last verdict
with its log tail (fenced as untrusted data) and the current train.py. It edits through the tools of
`tools.py`, which act on an in-memory copy of train.py and of the notes and nothing else:
`view_file`, `str_replace`, `rewrite_file`, `finish`, `write_notes`, and the read-only `view_trial`.
No tool takes a path: no other file exists for it.

The history is the whole run, one compact row per trial (id, decision, val_bpb, delta vs the baseline,
description), capped at `history_tokens` (estimated as characters / 4): over the cap, the oldest
discards and crashes are folded into one summary line first, then the oldest of the rest.

`propose_program` is the opt-in program-evolution meta-proposal (see harness/program.py): a separate
conversation with the same SDK, retries and caps, whose only output is a new research-guidance
section for program.md, submitted with the `propose_guidance` tool.

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
  fails still reports what it cost (AgentError.usage). After every call the per-proposal caps are
  checked; one reached raises AgentCapReached (the loop stops the run and records the spend).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import tenacity
from anthropic.types import Message
from pydantic import BaseModel, ConfigDict

from harness.agents.base import (
    NOTES_LIMIT,
    AgentCapReached,
    AgentContext,
    AgentError,
    AgentFatal,
    HistoryRow,
    ProgramContext,
    ProgramProposal,
    Proposal,
    Usage,
    fence_untrusted,
)
from harness.agents.config import AgentSettings
from harness.agents.tools import (
    TOOLS,
    VIEW_TRIAL_TOOL,
    Finished,
    ToolError,
    Workspace,
    tool_result,
    validate_input,
    view_trial,
)
from harness.program import GUIDANCE_END, GUIDANCE_START

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

    def propose(self, ctx: AgentContext, cancel: threading.Event | None = None) -> Proposal:
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
        workspace = Workspace(ctx.train_py, ctx.notes, ctx.view_trial)
        tally = _Tally(model=settings.model)
        for turn in range(1, settings.max_edit_turns + 1):
            message = self._call(system, messages, tally)
            tally.add(message)
            tally.check_caps(settings, f"the proposal for trial {ctx.trial_index}")
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
                    notes = workspace.notes if workspace.notes != workspace.original_notes else None
                    return Proposal(
                        train_py=workspace.text, description=outcome.description, usage=usage, notes=notes
                    )
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

    def propose_program(self, ctx: ProgramContext) -> ProgramProposal:
        """A new research-guidance section for program.md (the meta-proposal; see the module docstring)."""
        settings = self.settings
        system = [{"type": "text", "text": META_PROGRAM, "cache_control": {"type": "ephemeral"}}]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": program_brief(ctx, settings)}]}
        ]
        tally = _Tally(model=settings.model)
        for turn in range(1, settings.max_edit_turns + 1):
            message = self._call(system, messages, tally, tools=PROGRAM_TOOLS)
            tally.add(message)
            tally.check_caps(settings, "the program-evolution proposal")
            messages.append({"role": "assistant", "content": _assistant_content(message)})
            if message.stop_reason in ("refusal", "model_context_window_exceeded"):
                raise AgentError(f"the model stopped with {message.stop_reason}", usage=tally.usage(settings))
            results: list[dict[str, Any]] = []
            tool_uses = [block for block in message.content if block.type == "tool_use"]
            for block in tool_uses:
                try:
                    if block.name == "view_trial":
                        lookup = validate_input(block.name, block.input, _ViewTrialArgs)
                        results.append(tool_result(block.id, view_trial(ctx.view_trial, lookup.trial_id)))
                    elif block.name == "propose_guidance":
                        if message.stop_reason == "max_tokens":
                            raise ToolError("your reply hit max_tokens before this call was complete")
                        args = validate_input(block.name, block.input, _GuidanceArgs)
                        guidance, description = check_guidance(args.guidance, args.description, ctx.guidance)
                        return ProgramProposal(
                            guidance=guidance, description=description, usage=tally.usage(settings)
                        )
                    else:
                        raise ToolError(
                            f"unknown tool {block.name!r}; the tools are: view_trial, propose_guidance"
                        )
                except ToolError as exc:
                    results.append(tool_result(block.id, str(exc), error=True))
            if not tool_uses:
                results.append({"type": "text", "text": "Use the tools: call propose_guidance."})
            if settings.max_edit_turns - turn == 1:
                results.append({"type": "text", "text": "This is your last turn: call propose_guidance now."})
            messages.append({"role": "user", "content": results})
        raise AgentError(
            f"no program proposal after {settings.max_edit_turns} turns", usage=tally.usage(settings)
        )

    def _call(
        self,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tally: _Tally,
        *,
        tools: list[dict[str, Any]] = TOOLS,
    ) -> Message:
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
                tools=tools,
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
    """The user turn: the notes (fenced), the history, best score, the last verdict (untrusted parts
    fenced), train.py, the task."""
    parts = [
        f"Trial {ctx.trial_index} of an autoresearch run on the {ctx.profile!r} profile. Lower val_bpb is better.",
        notes_block(ctx.notes),
    ]
    table = history_table(ctx.history, settings)
    if table:
        parts.append(table)
    best = f"{ctx.best_val_bpb:.6f}" if ctx.best_val_bpb is not None else "not measured yet"
    parts.append(f"Best val_bpb so far: {best}. The train.py below is the one that scored it.")
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
        "description. train.py is the only file you can see or change. view_trial shows a past trial's "
        "diff and output; write_notes replaces your notes (keep there what later trials should know)."
    )
    return "\n\n".join(parts)


def notes_block(notes: str, *, whose: str = "Your") -> str:
    """The notes as a model sees them: fenced, since they may quote untrusted program output."""
    if not notes.strip():
        return f"{whose} research notes are empty." + (
            " Use write_notes to keep what you learn for later trials." if whose == "Your" else ""
        )
    return f"{whose} research notes, as last written:\n" + fence_untrusted(
        notes,
        limit=NOTES_LIMIT * 2,
        label="the researcher's own notes (its words, but they may quote untrusted program output)",
    )


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token), enough to keep a table within a budget."""
    return len(text) // 4 + 1


def _history_line(row: HistoryRow) -> str:
    bpb = f"{row.val_bpb:.6f}" if row.val_bpb is not None else "-"
    delta = f"{row.delta:+.6f}" if row.delta is not None else "-"
    decision = row.decision if row.status in ("ok", row.decision) else f"{row.decision} ({row.status})"
    text = " ".join(row.description.split()).replace("|", "/")[:HISTORY_DESCRIPTION_LIMIT]
    return f"| {row.trial_id} | {decision} | {bpb} | {delta} | {text} |"


def _summary_line(rows: Sequence[HistoryRow]) -> str:
    """One table line standing for `rows`, folded out of the table to fit its token cap."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.decision] = counts.get(row.decision, 0) + 1
    scored = [r for r in rows if r.val_bpb is not None]
    best = min(scored, key=lambda r: r.val_bpb if r.val_bpb is not None else 0.0) if scored else None
    what = ", ".join(f"{n} {d}" for d, n in sorted(counts.items()))
    ids = f"{rows[0].trial_id} to {rows[-1].trial_id}" if len(rows) > 1 else rows[0].trial_id
    tail = f"; the best of them {best.val_bpb:.6f} ({best.trial_id})" if best and best.val_bpb else ""
    return f"| ({len(rows)} older) | {what} | | | summarized, {ids}{tail}; view_trial shows any of them |"


def history_table(history: Sequence[HistoryRow], settings: AgentSettings) -> str:
    """The run's history, compact, within `history_tokens`: the oldest discards and crashes are folded
    into one summary line first, then the oldest of the rest. "" when there is no history."""
    if settings.history_rows == 0:
        return ""
    rows = list(history if settings.history_rows is None else history[-settings.history_rows :])
    if not rows:
        return ""
    header = ["| trial | decision | val_bpb | Δ vs baseline | description |", "|---|---|---|---|---|"]
    lines = [_history_line(r) for r in rows]
    budget = settings.history_tokens - estimate_tokens("\n".join(header)) - 80  # room for the summary
    used = sum(estimate_tokens(line) for line in lines)
    kept = ("keep", "baseline")
    order = [i for i, r in enumerate(rows) if r.decision not in kept]
    order += [i for i, r in enumerate(rows) if r.decision in kept]
    folded: set[int] = set()
    for i in order:  # the oldest discards and crashes first, then the oldest of the rest
        if used <= budget or len(folded) == len(rows) - 1:
            break
        folded.add(i)
        used -= estimate_tokens(lines[i])
    table = list(header)
    if folded:
        table.append(_summary_line([r for i, r in enumerate(rows) if i in folded]))
    table += [line for i, line in enumerate(lines) if i not in folded]
    hidden = len(history) - len(rows) + len(folded)
    scope = "the whole run" if not hidden else f"{len(history) - hidden} of {len(history)} listed"
    return f"Trials so far ({scope}, oldest first; Δ is val_bpb minus the baseline mean):\n" + "\n".join(
        table
    )


class _ViewTrialArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    trial_id: str


class _GuidanceArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    guidance: str
    description: str


GUIDANCE_LIMIT = 8 * 1024

META_PROGRAM = (
    "You improve the research guidance that an autonomous ML researcher follows. The researcher edits "
    "train.py, one change per trial, to lower val_bpb; program.md gives it the rules and the guidance. "
    "You may rewrite only the research-guidance section of program.md (strategy: what to try, in what "
    "order, what to avoid, how to read results). The rest of program.md is fixed by the human and is "
    "enforced by the harness whatever the guidance says, so do not restate or relax rules there. Base "
    "the new guidance on the run's results and the researcher's notes; keep it concise."
)

PROGRAM_TOOLS: list[dict[str, Any]] = [
    VIEW_TRIAL_TOOL,
    {
        "name": "propose_guidance",
        "description": "Submit the complete new research-guidance section (markdown, at most "
        f"{GUIDANCE_LIMIT} bytes, without the section markers) and a one-line description of the "
        "change. Ends this task.",
        "input_schema": {
            "type": "object",
            "properties": {
                "guidance": {"type": "string", "description": "the complete new section"},
                "description": {"type": "string", "description": "one line: what changed and why"},
            },
            "required": ["guidance", "description"],
            "additionalProperties": False,
        },
    },
]


def check_guidance(guidance: str, description: str, current: str) -> tuple[str, str]:
    """(guidance, one-line description) when acceptable, else a ToolError the model can act on."""
    if GUIDANCE_START in guidance or GUIDANCE_END in guidance:
        raise ToolError("the guidance must not contain the section markers; send the section's text only")
    size = len(guidance.encode("utf-8"))
    if size > GUIDANCE_LIMIT:
        raise ToolError(f"the guidance is {size} bytes; the limit is {GUIDANCE_LIMIT}: shorten it")
    if not guidance.strip():
        raise ToolError("the guidance is empty")
    if guidance.strip() == current.strip():
        raise ToolError("the guidance is unchanged; change it")
    line = next((" ".join(ln.split()) for ln in description.splitlines() if ln.strip()), "")
    if not line:
        raise ToolError("description is empty; give one line saying what you changed and why")
    return guidance.strip() + "\n", line[:200]


def program_brief(ctx: ProgramContext, settings: AgentSettings) -> str:
    """The meta-proposal's user turn: program.md, the notes (fenced), the results, the task."""
    best = f"{ctx.best_val_bpb:.6f}" if ctx.best_val_bpb is not None else "-"
    base = f"{ctx.baseline_val_bpb:.6f}" if ctx.baseline_val_bpb is not None else "-"
    parts = [
        f"The run has {ctx.candidates} candidate trials so far; baseline val_bpb {base}, best {best}.",
        f'program.md as it is now:\n<file name="program.md">\n{ctx.program}\n</file>',
        f"Its research-guidance section, the only part you may change:\n<section>\n{ctx.guidance}\n</section>",
        notes_block(ctx.notes, whose="The researcher's"),
    ]
    table = history_table(ctx.history, settings)
    if table:
        parts.append(table)
    parts.append(
        "Propose a better research-guidance section with propose_guidance; view_trial shows a trial's "
        "diff and output if you need them."
    )
    return "\n\n".join(parts)
