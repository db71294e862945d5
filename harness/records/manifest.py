"""A trial folder's files: their hashes, and manifest.json.

The manifest holds the facts of a trial that do not depend on its judgement (`TrialFacts`, the part of
its ledger row the runs decide) and the SHA-256 of every other file in the folder. It is written before
the row, whose `hashes` then name the manifest's own hash; `manifest_for` derives it from those facts,
so the two never disagree, and anyone can re-derive a folder's manifest from its ledger row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.records.schemas import TrialFacts
from sandbox.incontainer.fileio import sha256_file

MANIFEST_FILE = "manifest.json"


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


def manifest_for(facts: TrialFacts, hashes: Mapping[str, str]) -> dict[str, Any]:
    """manifest.json of a trial: its facts (of a `TrialFacts`, or of the `TrialRecord` written after it)
    and the hashes of the folder's other files."""
    dumped = facts.model_dump(mode="json", include=set(TrialFacts.model_fields))
    return {**dumped, "hashes": dict(hashes)}


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The bytes manifest.json holds (sorted keys, so the same facts give the same hash)."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def tree_hashes(record_hashes: Mapping[str, str]) -> dict[str, str]:
    """A row's `hashes` without the manifest's own: what its manifest.json lists."""
    return {k: v for k, v in record_hashes.items() if k != MANIFEST_FILE}
