"""program.md's two parts, and the opt-in program evolution that may rewrite one of them.

program.md holds the human's rules (what may change, the contract, the metric) and a research-guidance
section (strategy), delimited by two marker lines:

    <!-- research-guidance:start -->
    ...
    <!-- research-guidance:end -->

With `program_evolution_every = N` (0, the default: off), every N candidate trials the loop asks the
agent for a meta-proposal (harness/agents/base.py `ProgramEditor`) that sees program.md, the notes and
the run's results and returns a new guidance section, and nothing else: `with_guidance` splices it
between the markers of the human's current program.md, so the rules are the human's text byte for byte
(and `rules_of` checks it again before anything is written). The sandbox enforces the rules anyway; the
guidance cannot weaken isolation.

Each step is a ledger row of kind `program` (harness/records/schemas.py `ProgramRecord`), written
after the new program.md and its diff are stored under `programs/` and committed to the lineage (a
chain of its own under `refs/autoresearch/program`, harness/records/lineage.py). A failed
meta-proposal is a `program` row too (outcome `failed`), so it is not retried before the next N
candidates. The next proposals use the evolved guidance inside the human's current rules; turning the
option off pins program.md as the human wrote it, at any time.
"""

from __future__ import annotations

import difflib

GUIDANCE_START = "<!-- research-guidance:start -->"
GUIDANCE_END = "<!-- research-guidance:end -->"


def split(program: str) -> tuple[str, str, str] | None:
    """(before, guidance, after) around the markers, or None unless each marker occurs once, in order."""
    if program.count(GUIDANCE_START) != 1 or program.count(GUIDANCE_END) != 1:
        return None
    start = program.index(GUIDANCE_START)
    end = program.index(GUIDANCE_END)
    if end < start:
        return None
    inner = start + len(GUIDANCE_START)
    return program[:inner], program[inner:end], program[end:]


def guidance_of(program: str) -> str | None:
    """The research-guidance section's text (without the markers), or None when there is none."""
    parts = split(program)
    return parts[1].strip("\n") + "\n" if parts is not None else None


def rules_of(program: str) -> str | None:
    """Everything outside the guidance section (markers included): the part that never evolves."""
    parts = split(program)
    return parts[0] + parts[2] if parts is not None else None


def with_guidance(program: str, guidance: str) -> str:
    """`program` with its guidance section replaced; ValueError when it has no section or the result
    would not keep the rules byte for byte (e.g. the guidance smuggles in a marker)."""
    parts = split(program)
    if parts is None:
        raise ValueError(f"program.md has no research-guidance section ({GUIDANCE_START} ... {GUIDANCE_END})")
    before, _, after = parts
    result = f"{before}\n{guidance.strip(chr(10))}\n{after}"
    if rules_of(result) != before + after:
        raise ValueError("the new guidance would change program.md outside its research-guidance section")
    return result


def due(candidates: int, every: int, last_after: int | None) -> bool:
    """Whether a program-evolution step is due: a multiple of `every` candidates was reached since the
    last step (`last_after`: the candidates there were at the last step, None: no step yet)."""
    if every <= 0 or candidates <= 0:
        return False
    return candidates // every > (last_after or 0) // every


def program_diff(old: str, new: str, *, old_label: str, new_label: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/program.md ({old_label})",
            tofile=f"b/program.md ({new_label})",
        )
    )
