"""A trial folder's files: their hashes, and manifest.json.

The manifest holds the facts of a trial that do not depend on its judgement (`TrialFacts`, the part of
its ledger row the runs decide) and the SHA-256 of every other file in the folder. It is written before
the row, whose `hashes` then name the manifest's own hash; `manifest_for` derives it from those facts,
so the two never disagree, and anyone can re-derive a folder's manifest from its ledger row.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.incontainer.fileio import sha256_file


def hash_tree(folder: Path, *, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every regular file under `folder` (symlinks not followed), by relative path."""
    hashes: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skip or path.is_symlink() or not path.is_file():
                continue
            hashes[rel] = sha256_file(path)
    return hashes
