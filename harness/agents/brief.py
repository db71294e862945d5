"""The Claude agent's user turn: the notes (fenced), the run's history within a token cap, the best
score, the last verdict (untrusted parts fenced) and the current train.py.

Deliberate: the history is the whole run, one compact row per trial, capped at `history_tokens`
(characters / 4); over the cap the oldest discards and crashes are folded into one summary line
first, then the oldest of the rest, so the keeps stay listed longest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from harness.agents.base import NOTES_LIMIT, AgentContext, HistoryRow, fence_untrusted
from harness.agents.config import AgentSettings

logger = logging.getLogger(__name__)

REASON_LIMIT = 1_000
HISTORY_DESCRIPTION_LIMIT = 160

FALLBACK_PROGRAM = (
    "You are an autonomous ML researcher. You improve train.py, a single-file GPT training script that "
    "trains for a fixed wall-clock budget; a trusted evaluator then scores the exported model by "
    "validation bits per byte (val_bpb, lower is better). Make one focused change per trial."
)


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
