"""The tools the Claude agent gets, acting on an in-memory train.py, its notes, and nothing else.

Edit tools: `view_file`, `str_replace`, `rewrite_file`, `finish`. Research tools: `write_notes`
rewrites the agent's notebook (markdown, at most NOTES_LIMIT bytes; over the cap the call is refused
with an error result and the notes stay as they were), `view_trial` looks up a recorded trial by id
(its diff against its parent, verdict and reason, and a fenced, capped log tail; an unknown id is an
error result). None takes a path: train.py is the only file that exists for the model, and a looked-up
trial is named by its id alone. Every input is validated (pydantic, strict, no extra fields), so
a malformed call (unknown tool, missing field, wrong type, a stray `path`) becomes a ToolError whose
message goes back to the model as an is_error tool_result; nothing it sends can raise past this module.
`finish` is refused while train.py does not parse or is unchanged.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.agents.base import NOTES_LIMIT, TrialLookup, fence_untrusted

MAX_TRAIN_PY_CHARS = 200_000
DESCRIPTION_LIMIT = 200
DIFF_LIMIT = 12_000  # characters of a looked-up diff
LOOKUP_TAIL_LIMIT = 2_000  # characters of a looked-up log tail
REASON_LIMIT = 1_000

Lookup = Callable[[str], TrialLookup | None]

WRITE_NOTES_TOOL: dict[str, Any] = {
    "name": "write_notes",
    "description": "Replace your research notes (markdown) with content. They are shown to you at the "
    f"start of every later trial, after program.md. At most {NOTES_LIMIT} bytes: keep them a concise, "
    "current summary (what worked, what failed and why, what to try next), not a log.",
    "input_schema": {
        "type": "object",
        "properties": {"content": {"type": "string", "description": "the complete new notes"}},
        "required": ["content"],
        "additionalProperties": False,
    },
}

VIEW_TRIAL_TOOL: dict[str, Any] = {
    "name": "view_trial",
    "description": "Look up a recorded trial by id (e.g. 't0007'): its train.py diff against its parent, "
    "its verdict and reason, and the tail of its output. Read-only.",
    "input_schema": {
        "type": "object",
        "properties": {"trial_id": {"type": "string", "description": "a trial id from the history"}},
        "required": ["trial_id"],
        "additionalProperties": False,
    },
}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "view_file",
        "description": "Show the current train.py with line numbers (the numbers are not part of the file). "
        "train.py is the only file in this workspace.",
        "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    },
    {
        "name": "str_replace",
        "description": "Replace one occurrence of old_str in train.py with new_str. old_str must match the "
        "file exactly (whitespace included, no line numbers) and occur exactly once; include surrounding "
        "lines to make it unique.",
        "input_schema": {
            "type": "object",
            "properties": {
                "old_str": {"type": "string", "description": "exact text to replace"},
                "new_str": {"type": "string", "description": "the replacement"},
            },
            "required": ["old_str", "new_str"],
            "additionalProperties": False,
        },
    },
    {
        "name": "rewrite_file",
        "description": "Replace the whole of train.py with content. Prefer str_replace for local edits.",
        "input_schema": {
            "type": "object",
            "properties": {"content": {"type": "string", "description": "the complete new train.py"}},
            "required": ["content"],
            "additionalProperties": False,
        },
    },
    {
        "name": "finish",
        "description": "Submit train.py as it is now and end this trial's edit. Refused while train.py "
        "does not parse or is unchanged.",
        "input_schema": {
            "type": "object",
            "properties": {
                "description": {
                    "type": "string",
                    "description": "one line: what you changed and why, e.g. "
                    "'raise MATRIX_LR 0.04 -> 0.06 for faster early progress'",
                }
            },
            "required": ["description"],
            "additionalProperties": False,
        },
    },
    WRITE_NOTES_TOOL,
    VIEW_TRIAL_TOOL,
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ViewInput(_Input):
    pass


class _StrReplaceInput(_Input):
    old_str: str
    new_str: str


class _RewriteInput(_Input):
    content: str


class _FinishInput(_Input):
    description: str


class _NotesInput(_Input):
    content: str


class _ViewTrialInput(_Input):
    trial_id: str


_INPUTS: dict[str, type[_Input]] = {
    "view_file": _ViewInput,
    "str_replace": _StrReplaceInput,
    "rewrite_file": _RewriteInput,
    "finish": _FinishInput,
    "write_notes": _NotesInput,
    "view_trial": _ViewTrialInput,
}


class ToolError(Exception):
    """A tool call that could not be carried out; the message goes back to the model as is_error."""


@dataclass(frozen=True)
class Finished:
    """`finish` was accepted: train.py is ready to submit."""

    description: str


def numbered(text: str, first: int = 1, last: int | None = None) -> str:
    lines = text.split("\n")
    last = len(lines) if last is None else min(last, len(lines))
    return "\n".join(f"{i:5d}| {lines[i - 1]}" for i in range(max(first, 1), last + 1))


def parse_error(text: str) -> str | None:
    """None if `text` parses as Python, else where and why it does not."""
    try:
        ast.parse(text, filename="train.py")
    except SyntaxError as exc:
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # e.g. a NUL byte
        return f"not valid Python source: {exc}"
    return None


def validate_input(name: str, raw_input: object, schema: type[BaseModel]) -> Any:
    """`raw_input` as `schema`, or a ToolError saying what is wrong with it."""
    try:
        return schema.model_validate(raw_input)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors()
        )
        raise ToolError(f"invalid input for {name}: {problems}") from exc


def check_notes(content: str) -> str:
    """The notes if they fit NOTES_LIMIT, else a ToolError saying by how much they are over."""
    size = len(content.encode("utf-8"))
    if size > NOTES_LIMIT:
        raise ToolError(
            f"the notes would be {size} bytes; the limit is {NOTES_LIMIT}. They were NOT saved: shorten "
            "them (summarize, drop what is settled) and call write_notes again"
        )
    return content


def view_trial(lookup: Lookup | None, trial_id: str) -> str:
    """The `view_trial` result: trusted facts plain, the untrusted reason and log tail fenced."""
    found = lookup(trial_id.strip()) if lookup is not None else None
    if found is None:
        raise ToolError(f"no recorded trial {trial_id!r}; use an id from the trials table (e.g. t0003)")
    bpb = f"{found.val_bpb:.6f}" if found.val_bpb is not None else "-"
    parts = [
        f"Trial {found.trial_id} ({found.kind}): status {found.status}, decision {found.decision}, "
        f"val_bpb {bpb}. Description: {' '.join(found.description.split())}"
    ]
    if found.reason:
        parts.append(
            fence_untrusted(found.reason, limit=REASON_LIMIT, label="the sandbox's reason for its verdict")
        )
    if found.diff:
        diff = found.diff
        if len(diff) > DIFF_LIMIT:
            diff = (
                diff[:DIFF_LIMIT] + f"\n[{len(found.diff) - DIFF_LIMIT} more characters of the diff omitted]"
            )
        parts.append(f"Its train.py diff against its parent {found.parent}:\n```diff\n{diff}\n```")
    else:
        parts.append(
            "No diff: this is a run of the starting train.py." if found.kind == "baseline" else "No diff."
        )
    parts.append(
        fence_untrusted(
            found.log_tail or "(no output)",
            limit=LOOKUP_TAIL_LIMIT,
            label="the tail of that trial's train.py output",
        )
    )
    return "\n\n".join(parts)


class Workspace:
    """train.py and the notes as the model is editing them. Each method returns the tool_result text
    or raises ToolError."""

    def __init__(self, original: str, notes: str = "", lookup: Lookup | None = None) -> None:
        self.original = original
        self.text = original
        self.original_notes = notes
        self.notes = notes
        self.lookup = lookup

    def run(self, name: str, raw_input: object) -> str | Finished:
        schema = _INPUTS.get(name)
        if schema is None:
            raise ToolError(f"unknown tool {name!r}; the tools are: {', '.join(_INPUTS)}")
        args = validate_input(name, raw_input, schema)
        if isinstance(args, _NotesInput):
            self.notes = check_notes(args.content)
            return f"Notes saved ({len(args.content.encode('utf-8'))} of {NOTES_LIMIT} bytes)."
        if isinstance(args, _ViewTrialInput):
            return view_trial(self.lookup, args.trial_id)
        if isinstance(args, _StrReplaceInput):
            return self.str_replace(args.old_str, args.new_str)
        if isinstance(args, _RewriteInput):
            return self.rewrite(args.content)
        if isinstance(args, _FinishInput):
            return self.finish(args.description)
        return numbered(self.text)

    def str_replace(self, old: str, new: str) -> str:
        if not old:
            raise ToolError("old_str is empty; give the exact text to replace")
        if old == new:
            raise ToolError("old_str and new_str are identical: nothing would change")
        count = self.text.count(old)
        if count == 0:
            raise ToolError(
                "old_str was not found in train.py. It must match exactly, whitespace included and without "
                "line numbers; call view_file to see the current text"
            )
        if count > 1:
            raise ToolError(f"old_str occurs {count} times in train.py; include more lines so it occurs once")
        at = self.text.index(old)
        self._set(self.text[:at] + new + self.text[at + len(old) :])
        first = self.text.count("\n", 0, at) + 1
        last = first + new.count("\n")
        return f"Edited train.py:\n{numbered(self.text, first - 3, last + 3)}{self._parse_note()}"

    def rewrite(self, content: str) -> str:
        if not content.strip():
            raise ToolError("content is empty; rewrite_file replaces the whole of train.py")
        self._set(content)
        return f"train.py rewritten ({content.count(chr(10)) + 1} lines).{self._parse_note()}"

    def finish(self, description: str) -> Finished:
        error = parse_error(self.text)
        if error is not None:
            raise ToolError(f"train.py does not parse ({error}); fix it, then call finish again")
        if self.text == self.original:
            raise ToolError("train.py is unchanged; edit it before calling finish")
        line = next((" ".join(ln.split()) for ln in description.splitlines() if ln.strip()), "")
        if not line:
            raise ToolError("description is empty; give one line saying what you changed and why")
        return Finished(line[:DESCRIPTION_LIMIT])

    def _set(self, text: str) -> None:
        if len(text) > MAX_TRAIN_PY_CHARS:
            raise ToolError(f"train.py would be {len(text)} characters; the limit is {MAX_TRAIN_PY_CHARS}")
        self.text = text

    def _parse_note(self) -> str:
        error = parse_error(self.text)
        return (
            ""
            if error is None
            else f"\nWarning: train.py does not parse now ({error}). Fix it before finish."
        )


def tool_result(tool_use_id: str, text: str, *, error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text}
    if error:
        result["is_error"] = True
    return result
