"""The one atomic file write and the one file SHA-256 of the project.

Used on both sides of the boundary (the controller's ledger and trial folders, the data build, the
evaluator's report), so it lives in sandbox/incontainer/ and imports only the standard library.

Deliberate properties:
- A reader sees the old file or the complete new one, never half: the bytes go to a unique temporary
  file in the same folder (so concurrent writers never share one), which then replaces the target.
- `durable` (the default) fsyncs before the rename, so a crash cannot leave a renamed empty file.
- The mode is explicit (0644 unless told): mkstemp's 0600 would hide data files from the container
  uid, and the process umask is not read (that is not thread-safe).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


@contextmanager
def atomic_open(path: Path, *, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block exits without an exception (else it vanishes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` (str is written as UTF-8) atomically."""
    with atomic_open(path, mode=mode, durable=durable) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
