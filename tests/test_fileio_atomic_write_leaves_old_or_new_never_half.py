"""An atomic write leaves the old file or the complete new one, never half of it, and no temporary.

The ledger, trial folders, lease table, data build and evaluator report all go through
`sandbox.incontainer.fileio`: a write that fails midway must leave the previous content in place and
no stray temporary file, and the file gets the requested mode (data files are read by another uid).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sandbox.incontainer.fileio import atomic_open, atomic_write, sha256_file


def test_a_write_replaces_the_file_with_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n", mode=0o600)
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "ledger.jsonl"
    atomic_write(target, "old\n", durable=False)
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("crash midway")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.jsonl"]


def test_sha256_file_hashes_the_whole_file_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
