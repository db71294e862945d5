"""The profile tables a reader relies on (README.md's and program.md's) show the numbers
`prepare.PROFILES` holds: context, vocab, budget and grace, eval tokens, eval batch, in whatever
columns a table has.

Defeats drift: README once said the tiny profile scores 131,072 eval tokens while prepare.py scored
65,536. Every column of a profile table is either checked against a `Profile` field or named here as
descriptive (free text such as "for" or "hardware"); a new column that is neither fails this test,
so a number cannot join a table without being checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import prepare

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "program.md")

# Header (lower case, backticks stripped) -> the checks of one cell against a Profile.
Check = Callable[[str, prepare.Profile], list[str]]
DESCRIPTIVE = frozenset({"profile", "for", "hardware", "data"})

_NUMBER = re.compile(r"(~)?([0-9][0-9,]*(?:\.[0-9]+)?)\s*([kKM]?)")
_SCALE = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000}


@dataclass(frozen=True)
class Shown:
    """A number as a table shows it: exact, or approximate (`~21M`) to its last shown digit."""

    value: float
    approximate: bool
    step: float  # the value of one unit in the last shown digit

    def matches(self, actual: int) -> bool:
        if not self.approximate:
            return self.value == actual
        return abs(self.value - actual) <= self.step / 2


def numbers(cell: str) -> list[Shown]:
    out = []
    for m in _NUMBER.finditer(cell):
        digits, scale = m.group(2).replace(",", ""), _SCALE[m.group(3)]
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        out.append(Shown(float(digits) * scale, bool(m.group(1)), scale / 10**decimals))
    return out


def one_number(field: str) -> Check:
    """A cell holding exactly one number, equal to the profile's `field`."""

    def check(cell: str, profile: prepare.Profile) -> list[str]:
        actual = getattr(profile, field)
        shown = numbers(cell)
        if len(shown) != 1 or not shown[0].matches(actual):
            return [f"{cell!r} should show {field}={actual}"]
        return []

    return check


def budget(cell: str, profile: prepare.Profile) -> list[str]:
    """`30 s` (the budget) or `30 s (+15 s grace)` (the budget and the kill grace)."""
    shown = numbers(cell)
    wanted = [profile.time_budget] + ([profile.kill_grace] if "grace" in cell else [])
    if len(shown) != len(wanted) or not all(s.matches(w) for s, w in zip(shown, wanted, strict=True)):
        return [f"{cell!r} should show time_budget={profile.time_budget}, kill_grace={profile.kill_grace}"]
    return []


CHECKED: dict[str, Check] = {
    "context": one_number("max_seq_len"),
    "max_seq_len": one_number("max_seq_len"),
    "vocab": one_number("vocab_size"),
    "vocab_size": one_number("vocab_size"),
    "budget": budget,
    "time_budget": budget,
    "grace": one_number("kill_grace"),
    "eval tokens": one_number("eval_tokens"),
    "eval batch": one_number("eval_batch_size"),
    "batch": one_number("eval_batch_size"),
}


@dataclass(frozen=True)
class Table:
    document: str
    line: int
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def profile_tables(document: str) -> list[Table]:
    """Markdown tables whose first column is `profile`."""
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    tables: list[Table] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[-|: ]+\|", lines[i + 1]):
            header = [c.replace("`", "").lower() for c in _cells(lines[i])]
            j = i + 2
            rows = []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(_cells(lines[j]))
                j += 1
            if header[0] == "profile":
                tables.append(Table(document, i + 1, header, rows))
            i = j
        else:
            i += 1
    return tables


TABLES = [t for d in DOCUMENTS for t in profile_tables(d)]


def test_each_document_has_a_profile_table() -> None:
    """The parser found the tables (a reformatted table must not silently escape the check)."""
    assert sorted({t.document for t in TABLES}) == sorted(DOCUMENTS)
    for table in TABLES:
        names = [row[0].strip("`") for row in table.rows]
        assert sorted(names) == sorted(prepare.PROFILES), f"{table.document}:{table.line}: {names}"
        assert any(h in CHECKED for h in table.header), f"{table.document}:{table.line} checks nothing"


@pytest.mark.parametrize("table", TABLES, ids=[f"{t.document}:{t.line}" for t in TABLES])
def test_every_number_in_a_profile_table_is_the_one_prepare_uses(table: Table) -> None:
    """Each checked cell shows its Profile field; no column is left unclassified."""
    unknown = [h for h in table.header if h not in CHECKED and h not in DESCRIPTIVE]
    assert not unknown, (
        f"{table.document}:{table.line}: columns {unknown} are neither checked nor descriptive"
    )
    wrong: list[str] = []
    for row in table.rows:
        profile = prepare.PROFILES[row[0].strip("`")]
        for header, cell in zip(table.header, row, strict=True):
            if header in CHECKED:
                wrong += [f"{profile.name} {header}: {w}" for w in CHECKED[header](cell, profile)]
    assert not wrong, f"{table.document}:{table.line} disagrees with prepare.PROFILES: {wrong}"


def test_the_checks_catch_a_drifted_number() -> None:
    """The check itself: the old README's 131,072 fails, an approximation is held to its digits."""
    tiny, gpu = prepare.PROFILES["tiny"], prepare.PROFILES["gpu"]
    assert CHECKED["eval tokens"]("131,072", tiny) != []
    assert CHECKED["eval tokens"](f"{tiny.eval_tokens:,}", tiny) == []
    assert CHECKED["eval tokens"]("~21M", gpu) == []  # 20,971,520
    assert CHECKED["eval tokens"]("~22M", gpu) != []
    assert CHECKED["budget"]("30 s (+15 s grace)", tiny) == []
    assert CHECKED["budget"]("30 s (+20 s grace)", tiny) != []
    assert CHECKED["budget"]("45 s", tiny) != []
