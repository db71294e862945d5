"""results.tsv stays readable by the reference's analysis: the exact header, val_bpb with six
decimals (0.000000 without a score), memory with one decimal, and a description that can never add
a column or a row whatever the agent wrote. It is derived from the ledger and only ever appended
to: `sync` adds what a crash left out and never rewrites a file that disagrees.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.records.results import (
    HEADER,
    ResultRow,
    ResultsError,
    ResultsFile,
    format_row,
    sanitize_description,
)


def test_header_and_number_formats(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.tsv")
    results.append(
        [
            ResultRow(
                commit="a1b2c3d4e5f6", val_bpb=0.99781234, memory_gb=44.04, status="keep", description="x"
            ),
            ResultRow(commit="0123456789", val_bpb=None, memory_gb=None, status="crash", description="oom"),
        ]
    )
    text = (tmp_path / "results.tsv").read_text(encoding="utf-8")
    assert HEADER == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert text == f"{HEADER}\na1b2c3d\t0.997812\t44.0\tkeep\tx\n0123456\t0.000000\t0.0\tcrash\toom\n"
    rows = results.read()
    assert rows[0].val_bpb == pytest.approx(0.997812) and rows[1].val_bpb is None


def test_descriptions_cannot_add_columns_or_rows() -> None:
    nasty = "tab\there\nnew line\r\nand\x00nul\u2028sep   spaces"
    clean = sanitize_description(nasty)
    assert "\t" not in clean and "\n" not in clean and "\r" not in clean and "\x00" not in clean
    assert clean == "tab here new line and nul sep spaces"
    line = format_row(ResultRow(commit="abc", val_bpb=1.0, memory_gb=1.0, status="keep", description=nasty))
    assert line.count("\t") == 4 and "\n" not in line
    assert len(sanitize_description("y" * 1000)) <= 300


def test_sync_appends_only_the_missing_tail(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.tsv")
    expected = [
        ResultRow(commit=f"{i:07d}", val_bpb=1.0, memory_gb=1.0, status="discard", description=str(i))
        for i in range(4)
    ]
    results.append(expected[:2])
    assert results.sync(expected) == 2
    assert [r.description for r in results.read()] == ["0", "1", "2", "3"]
    assert results.sync(expected) == 0


def test_sync_never_rewrites_a_file_that_disagrees(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.tsv")
    results.append([ResultRow(commit="x" * 7, val_bpb=2.0, memory_gb=1.0, status="keep", description="mine")])
    before = results.path.read_bytes()
    other = [ResultRow(commit="y" * 7, val_bpb=1.0, memory_gb=1.0, status="keep", description="ledger")] * 2
    assert results.sync(other) == 0
    assert results.path.read_bytes() == before


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.tsv"
    path.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ResultsError, match="header"):
        ResultsFile(path).append(
            [ResultRow(commit="c", val_bpb=1, memory_gb=1, status="keep", description="d")]
        )
    assert path.read_text(encoding="utf-8") == "a\tb\n"
