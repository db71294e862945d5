"""Editing the ledger's history is evident: `verify` names the first row that was changed, removed,
reordered or rewritten, and the loop refuses to continue on such a ledger. A torn final line (the
controller killed inside its one write) is the only damage ever repaired, and the fragment is
kept aside, never silently dropped.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.records.chain import GENESIS, Ledger, TornTail, canonical, row_hash, verify


def filled(tmp_path: Path, n: int = 5) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(n):
        ledger.append({"trial_id": f"t{i:04d}", "val_bpb": 1.0 - i / 100, "description": f"row {i} ✓"})
    return ledger


def test_rows_chain_from_the_genesis_hash(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    rows = ledger.rows()
    assert [r["index"] for r in rows] == list(range(5))
    assert rows[0]["prev_hash"] == GENESIS
    for prev, row in itertools.pairwise(rows):
        assert row["prev_hash"] == prev["hash"]
    for row in rows:
        assert row["hash"] == row_hash(row)
    lines = ledger.path.read_bytes().split(b"\n")[:-1]
    assert all(line == canonical(row) for line, row in zip(lines, rows, strict=True))
    result = verify(tmp_path)  # a run folder works as well as the file
    assert result.ok and result.rows == 5 and result.last_hash == rows[-1]["hash"]


def test_editing_one_number_fails_naming_that_row(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert '"val_bpb":0.97' in lines[3]
    lines[3] = lines[3].replace('"val_bpb":0.97', '"val_bpb":0.87')
    ledger.path.write_text("".join(lines), encoding="utf-8")
    result = verify(ledger.path)
    assert not result.ok and result.bad is not None
    assert result.bad.index == 3 and result.rows == 3
    assert "edited" in result.bad.why
    assert str(result.bad).startswith("row 3 (line 4)")


def test_recomputing_the_edited_rows_hash_still_breaks_the_next_link(tmp_path: Path) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[1])
    row["val_bpb"] = 0.5
    row["hash"] = row_hash(row)
    lines[1] = canonical(row).decode()
    ledger.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = verify(ledger.path)
    assert result.bad is not None and result.bad.index == 2 and "prev_hash" in result.bad.why


@pytest.mark.parametrize(
    ("damage", "index", "why"),
    [
        (lambda ls: ls[:2] + ls[3:], 2, "removed"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 1, "index"),
        (lambda ls: [*ls[:4], ls[4].replace(":", ": ", 1)], 4, "canonical"),
        (lambda ls: [*ls[:1], "not json", *ls[2:]], 1, "JSON"),
    ],
    ids=["removed", "reordered", "reformatted", "garbage"],
)
def test_removed_reordered_reformatted_or_garbage_rows_are_named(
    tmp_path: Path, damage: Callable[[list[str]], list[str]], index: int, why: str
) -> None:
    ledger = filled(tmp_path)
    lines = ledger.path.read_text(encoding="utf-8").splitlines()
    ledger.path.write_text("\n".join(damage(lines)) + "\n", encoding="utf-8")
    result = verify(ledger.path)
    assert result.bad is not None and result.bad.index == index
    assert re.search(why, result.bad.why, re.IGNORECASE)


def test_a_torn_tail_blocks_appends_until_repaired_and_the_fragment_is_kept(tmp_path: Path) -> None:
    ledger = filled(tmp_path, 3)
    good = ledger.path.read_bytes()
    fragment = b'{"description":"half a ro'
    ledger.path.write_bytes(good + fragment)
    result = verify(ledger.path)
    assert result.bad is not None and result.bad.index == 3 and "incomplete final line" in result.bad.why
    with pytest.raises(TornTail):
        ledger.append({"trial_id": "t0003"})
    what = ledger.repair_torn_tail()
    assert what is not None and "cut" in what
    assert ledger.path.read_bytes() == good
    saved = list(tmp_path.glob("ledger.jsonl.torn-*"))
    assert len(saved) == 1 and saved[0].read_bytes() == fragment
    assert ledger.repair_torn_tail() is None  # nothing more to do
    ledger.append({"trial_id": "t0003"})
    assert verify(ledger.path).ok and verify(ledger.path).rows == 4


def test_a_complete_row_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    ledger = filled(tmp_path, 3)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-1])  # the last row lacks only its newline
    assert ledger.repair_torn_tail() is not None
    assert ledger.path.read_bytes() == data
    assert verify(ledger.path).rows == 3


def test_damage_other_than_a_torn_tail_is_never_repaired(tmp_path: Path) -> None:
    ledger = filled(tmp_path, 3)
    tampered = ledger.path.read_text(encoding="utf-8").replace("row 1", "row X")
    ledger.path.write_text(tampered, encoding="utf-8")
    assert ledger.repair_torn_tail() is None
    assert ledger.path.read_text(encoding="utf-8") == tampered


def test_the_chain_keys_belong_to_the_ledger(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hash"):
        Ledger(tmp_path / "ledger.jsonl").append({"hash": "x"})


def test_non_finite_numbers_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError):
        ledger.append({"val_bpb": float("nan")})
    assert not ledger.path.exists() or ledger.path.read_bytes() == b""
