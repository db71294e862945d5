"""What crosses between the controller and a cluster node, and how the trial folder travels back.

Everything a node returns is plain data: a JSON string, a dict of strings and numbers, and the
trial folder as a tar archive in bytes. Nothing from a node is ever unpickled by the controller
(Ray pickles return values; a dict of primitives and bytes unpickles without running code from the
trial), and each piece is validated here before it is used:

- `TrialPayload`: the trial spec a node needs (candidate source text, not a path; profile, seed,
  limits, image and data pins, trial id, dispatch id and attempt).
- `NodeFacts`: what a node's setup found (image id, data manifest hash, hardware class).
- `NodeReturn`: a node's answer to one dispatch: the verdict JSON and the archive, or a sandbox
  error as a (type, message) pair.
- `pack_trial_dir` / `unpack_trial_dir`: a size-capped tar of regular files and folders only.
  Extraction refuses absolute names, `..`, links, devices, anything else that is not a regular file
  or a folder, more members or bytes than the caps, and writes with fresh permissions (0644/0755),
  never the archive's owners or modes.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox.engine.limits import Limits, MiB

logger = logging.getLogger(__name__)

ARCHIVE_MAX_BYTES = 64 * MiB  # the trial folder as it comes back (logs are capped at 1 MiB each)
ARCHIVE_MAX_MEMBERS = 2048
CANDIDATE_MAX_BYTES = 1 * MiB  # a train.py larger than this is not a proposal anyone can review


class ArchiveError(ValueError):
    """A trial archive from a node breaks the rules above; nothing of it is kept."""


class TrialPayload(BaseModel):
    """One dispatch of a trial to a node: everything the node needs, nothing it may guess."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dispatch_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,96}$")
    attempt: int = Field(ge=1)
    trial_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    candidate_source: str = Field(max_length=CANDIDATE_MAX_BYTES)
    profile: Literal["tiny", "gpu"]
    seed: int
    limits: Limits
    min_compute_share: float = Field(ge=0, le=1)  # the run's starvation threshold (sandbox/compute.py)
    image_id: str  # the trainer image the run pinned ("sha256:..."); the node refuses another
    data_sha256: str  # the data manifest hash the run pinned
    data_dir: str | None = None  # where the data is on the node (None: the node's default)


class NodeFacts(BaseModel):
    """What a node's setup task found on its node (validated on the controller)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str = Field(pattern=r"^[0-9a-f]{8,128}$")
    node_name: str = Field(max_length=256)
    hostname: str = Field(max_length=256)
    hardware_class: str = Field(max_length=256)
    image_id: str | None = Field(default=None, max_length=256)  # None: the image is not there
    data_sha256: str | None = Field(default=None, max_length=128)  # None: no verified data
    reaped_containers: int = 0
    reaped_volumes: int = 0
    problems: list[str] = Field(default_factory=list)  # why the node cannot run trials at all


class NodeReturn(BaseModel):
    """A node's answer to one dispatch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dispatch_id: str
    node_id: str
    verdict_json: str | None = None  # the Verdict as the node's sandbox returned it
    archive: bytes | None = None  # the trial folder (pack_trial_dir)
    root: str = ""  # the node-local trial folder, so paths in the verdict can be rewritten
    error_type: str | None = None  # a SandboxError subclass name, when the sandbox failed
    error: str = ""


def pack_trial_dir(folder: Path, *, max_bytes: int = ARCHIVE_MAX_BYTES) -> bytes:
    """A tar of the regular files and folders under `folder`; links and special files are left out."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            base = Path(root)
            for name in sorted(dirs):
                path = base / name
                if not path.is_symlink():
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
            for name in sorted(files):
                path = base / name
                if path.is_symlink() or not path.is_file():
                    logger.warning("not sending %s back: not a regular file", path)
                    continue
                total += path.stat().st_size
                if total > max_bytes:
                    raise ArchiveError(f"the trial folder {folder} is larger than {max_bytes} bytes")
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise ArchiveError(f"unsafe name in a trial archive: {name!r}")
    return path


def unpack_trial_dir(
    data: bytes,
    dest: Path,
    *,
    max_bytes: int = ARCHIVE_MAX_BYTES,
    max_members: int = ARCHIVE_MAX_MEMBERS,
) -> list[str]:
    """Check the whole archive, then write it under `dest`; returns the files written.

    Everything is checked before anything is written, so a bad archive leaves `dest` untouched.
    """
    if len(data) > max_bytes + max_members * 1024:  # headers included
        raise ArchiveError(f"a trial archive of {len(data)} bytes is over the cap")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > max_members:
                raise ArchiveError(f"a trial archive with {len(members)} members (cap {max_members})")
            total = 0
            plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
            for m in members:
                rel = _safe_name(m.name)
                if not (m.isfile() or m.isdir()):
                    raise ArchiveError(f"{m.name!r} in a trial archive is not a regular file or folder")
                total += m.size if m.isfile() else 0
                if total > max_bytes:
                    raise ArchiveError(f"a trial archive unpacks to more than {max_bytes} bytes")
                plan.append((m, rel))
            written: list[str] = []
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            for m, rel in plan:
                target = root.joinpath(*rel.parts)
                if target.resolve().parent != target.parent.resolve() or not target.is_relative_to(root):
                    raise ArchiveError(f"{m.name!r} would land outside the trial folder")
                if m.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                if target.is_symlink() or (target.exists() and not target.is_file()):
                    raise ArchiveError(f"{target} exists and is not a regular file")
                source = tar.extractfile(m)
                if source is None:
                    raise ArchiveError(f"{m.name!r} cannot be read from the trial archive")
                with source, open(target, "wb") as out:
                    out.write(source.read(m.size + 1)[: m.size])
                target.chmod(0o644)
                written.append(rel.as_posix())
            return written
    except tarfile.TarError as exc:
        raise ArchiveError(f"not a readable trial archive: {exc}") from exc


def primitive(value: Any) -> Any:
    """`value` if it is JSON-shaped data (dicts of str, lists, str, numbers, bool, None, bytes)."""
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, list):
        return [primitive(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: primitive(v) for k, v in value.items()}
    raise ArchiveError(f"a node returned a {type(value).__name__}, not plain data")
