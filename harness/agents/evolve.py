"""The program-evolution meta-proposal (opt-in; see harness/program.py): a separate conversation,
through the same API layer, retries and caps as the edit loop, whose only output is a new
research-guidance section for program.md, submitted with the `propose_guidance` tool.

Deliberate: the model may change the guidance section only; its text is checked here (no section
markers, at most GUIDANCE_LIMIT bytes, not empty, not unchanged) and a refusal goes back to the model
as an is_error tool_result, never an exception.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness.agents.api import MessagesApi, Tally, assistant_content
from harness.agents.base import AgentError, ProgramContext, ProgramProposal
from harness.agents.brief import history_table, notes_block
from harness.agents.config import AgentSettings
from harness.agents.tools import VIEW_TRIAL_TOOL, ToolError, tool_result, validate_input, view_trial
from harness.program import GUIDANCE_END, GUIDANCE_START

logger = logging.getLogger(__name__)


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


def propose_program(
    api: MessagesApi, ctx: ProgramContext, cancel: threading.Event | None = None
) -> ProgramProposal:
    """A new research-guidance section for program.md, or AgentError (with its usage) after the turns."""
    settings = api.settings
    system = [{"type": "text", "text": META_PROGRAM, "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": program_brief(ctx, settings)}]}
    ]
    tally = Tally(model=settings.model)
    what = "the program-evolution proposal"
    for turn in range(1, settings.max_edit_turns + 1):
        message = api.call(system, messages, tally, tools=PROGRAM_TOOLS, cancel=cancel, what=what)
        tally.add(message)
        tally.check_caps(settings, what)
        messages.append({"role": "assistant", "content": assistant_content(message)})
        if message.stop_reason in ("refusal", "model_context_window_exceeded"):
            raise AgentError(f"the model stopped with {message.stop_reason}", usage=tally.usage(settings))
        results: list[dict[str, Any]] = []
        tool_uses = [block for block in message.content if block.type == "tool_use"]
        for block in tool_uses:
            tally.check_cancel(cancel, settings, what)
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
