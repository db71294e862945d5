"""ClaudeAgent: a tool-use edit loop over train.py through the anthropic SDK.

The model gets program.md as its system prompt and `brief.py`'s user turn; it edits through the tools
of `tools.py`, which act on an in-memory copy of train.py and of the notes and nothing else. The API
layer (client, retries, usage and caps) is `api.py`; the program-evolution meta-proposal `evolve.py`.

Deliberate:
- A malformed tool call (unknown tool, missing or extra fields, wrong types) is answered with an
  is_error tool_result the model can act on, never an exception; so is an edit that does not apply.
  `finish` is refused while train.py does not parse or is unchanged.
- Prompt caching: program.md (and the tools before it) carry a cache breakpoint, and so does the
  newest turn, so each call of the edit loop re-reads the conversation so far from the cache.
- A proposal that fails still reports what it cost (AgentError.usage).
- Cancellation: the event is checked before every API request (api.py, which also cuts a request in
  flight and a retry's backoff) and before every tool step; AgentCancelled carries the usage so far.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from harness.agents.api import MessagesApi, Tally, assistant_content, make_create
from harness.agents.base import AgentContext, AgentError, ProgramContext, ProgramProposal, Proposal
from harness.agents.brief import FALLBACK_PROGRAM, brief
from harness.agents.config import AgentSettings
from harness.agents.evolve import propose_program
from harness.agents.tools import Finished, ToolError, Workspace, tool_result

logger = logging.getLogger(__name__)


class ClaudeAgent:
    """Proposes by letting a Claude model edit train.py through tools."""

    name = "claude"

    def __init__(self, settings: AgentSettings, *, client: Any | None = None) -> None:
        self.settings = settings
        self._api = MessagesApi(settings, make_create(settings) if client is None else client.messages.create)
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
        tally = Tally(model=settings.model)
        what = f"the proposal for trial {ctx.trial_index}"
        for turn in range(1, settings.max_edit_turns + 1):
            message = self._api.call(system, messages, tally, cancel=cancel, what=what)
            tally.add(message)
            tally.check_caps(settings, what)
            messages.append({"role": "assistant", "content": assistant_content(message)})
            if message.stop_reason in ("refusal", "model_context_window_exceeded"):
                raise AgentError(f"the model stopped with {message.stop_reason}", usage=tally.usage(settings))
            results: list[dict[str, Any]] = []
            tool_uses = [block for block in message.content if block.type == "tool_use"]
            for block in tool_uses:
                tally.check_cancel(cancel, settings, what)
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

    def propose_program(self, ctx: ProgramContext, cancel: threading.Event | None = None) -> ProgramProposal:
        """A new research-guidance section for program.md (the meta-proposal; see evolve.py)."""
        return propose_program(self._api, ctx, cancel)
