"""The artifact's bytes: the output folder, the zip archive, the one pickle, the raw tensors.

The artifact (``model.pt2``, written by untrusted code) is hostile until checked. This module reads it
with Python's ``zipfile`` and ``pickletools`` only and raises ``ArtifactRejected`` naming the failed
check; ``program`` then sanitises the program JSON and hands torch only what passed. Nothing is
unpickled and no candidate code is imported.

Why not ``torch.export.load`` (read in torch 2.13's ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``): it is not safe on untrusted input.
  1. ``data/sample_inputs/model.pt`` is a ``torch.save`` pickle; ``deserialize_torch_artifact`` tries
     ``torch.load(weights_only=True)`` and, on failure, FALLS BACK TO ``weights_only=False``: any
     pickle payload (``os.system`` via REDUCE) runs.
  2. Weights or constants flagged ``use_pickle`` are loaded with ``weights_only=False``; ``opaque_obj_*``
     constants with ``pickle.loads``; ``custom_obj_*`` with the TorchScript unpickler.
  3. Any member under ``data/aotinductor/`` makes it load a compiled shared library.
  4. Symbolic shapes are parsed with ``sympy.sympify``, which is ``eval`` (``program`` vets them).
  5. ``ExportedProgram.module()`` ``exec``s the serialized ``guards_code`` when example inputs exist.

What this module checks, in order:
  * the folder holds exactly one regular file, ``model.pt2`` (no symlink, no hard link, size-capped),
    read through one ``O_NOFOLLOW`` descriptor (hashed and parsed from the same open file);
  * the zip: one safe root folder, no absolute/``..``/odd paths, no symlink or directory entries, no
    duplicates, no encryption, stored or deflated only, caps on member count, member size, total size
    and compression ratio (zip bombs), and exactly torch 2.13's ``torch.export.save`` member set
    (anything else, e.g. ``extra/`` or ``data/aotinductor/``, is refused);
  * the one pickle, ``data/sample_inputs/model.pt``, is scanned statically with ``pickletools`` (nothing
    executes) and refused unless every global it names is in a tiny allow-list; it is then IGNORED:
    the program is deserialized without example inputs, so no pickle is ever loaded and no guards code
    is generated;
  * weights and constants are rebuilt from raw little-endian bytes with bounds-checked ``as_strided``;
    any ``use_pickle`` payload is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from pydantic import BaseModel, ConfigDict

from sandbox.incontainer.constants import ARTIFACT_FILE

MiB = 2**20
GiB = 2**30


class ArtifactRejected(Exception):
    """The artifact breaks the contract; ``check`` names the failed check (a stable, short key)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class ArtifactLimits(BaseModel):
    """Size caps on the artifact, per profile. The TRAIN output channel is capped too; these bound parsing."""

    model_config = ConfigDict(frozen=True)
    max_file_bytes: int
    max_members: int
    max_member_bytes: int
    max_total_uncompressed_bytes: int
    max_compression_ratio: float  # uncompressed / compressed, per member and overall
    max_json_bytes: int
    max_sample_inputs_bytes: int


LIMITS: dict[str, ArtifactLimits] = {
    "tiny": ArtifactLimits(
        max_file_bytes=512 * MiB,
        max_members=4096,
        max_member_bytes=512 * MiB,
        max_total_uncompressed_bytes=1 * GiB,
        max_compression_ratio=50.0,
        max_json_bytes=64 * MiB,
        max_sample_inputs_bytes=64 * MiB,
    ),
    "gpu": ArtifactLimits(
        max_file_bytes=16 * GiB,
        max_members=16384,
        max_member_bytes=16 * GiB,
        max_total_uncompressed_bytes=24 * GiB,
        max_compression_ratio=50.0,
        max_json_bytes=256 * MiB,
        max_sample_inputs_bytes=256 * MiB,
    ),
}

# --- the torch 2.13 torch.export.save layout (relative to the archive's single root folder) ---
REQUIRED_MEMBERS = frozenset(
    "archive_format archive_version byteorder models/model.json data/weights/model_weights_config.json "
    "data/constants/model_constants_config.json".split()
)
OPTIONAL_MEMBERS = frozenset({".data/version", ".data/serialization_id", "data/sample_inputs/model.pt"})
_WEIGHT_RE = re.compile(r"data/weights/(weight_\d{1,9})")
_CONSTANT_RE = re.compile(r"data/constants/(tensor_\d{1,9})")
_ROOT_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")  # torch names it after the file it saved to
_MEMBER_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}")
_STORAGES = "Long Int Short Char Byte Bool Float Double Half BFloat16".split()
_PICKLE_GLOBALS = frozenset(
    {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict", *(f"torch.{k}Storage" for k in _STORAGES)}
)
_PICKLE_REFUSED_OPS = frozenset("INST OBJ NEWOBJ NEWOBJ_EX EXT1 EXT2 EXT4 PERSID".split())

_ALLOWED_DTYPES = frozenset(
    {
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)


# ----------------------------------------------------------------------------------------------
# 1. The folder and the file
# ----------------------------------------------------------------------------------------------


def open_artifact(artifact_dir: Path, limits: ArtifactLimits) -> tuple[BinaryIO, int]:
    """Check the folder holds exactly ``model.pt2`` as a lone regular file; return it opened, and its size."""
    try:
        dir_st = os.lstat(artifact_dir)
    except FileNotFoundError as e:
        raise ArtifactRejected("missing_artifact", f"no artifact folder at {artifact_dir}") from e
    if not stat.S_ISDIR(dir_st.st_mode):
        raise ArtifactRejected("artifact_dir", f"{artifact_dir} is not a directory (or is a symlink)")
    names = sorted(os.listdir(artifact_dir))
    if ARTIFACT_FILE not in names:
        raise ArtifactRejected(
            "missing_artifact", f"no {ARTIFACT_FILE} in the output folder (found {names[:10]})"
        )
    if names != [ARTIFACT_FILE]:
        extra = [n for n in names if n != ARTIFACT_FILE]
        raise ArtifactRejected(
            "extra_files", f"the output folder must hold only {ARTIFACT_FILE}; also found {extra[:10]}"
        )
    path = artifact_dir / ARTIFACT_FILE
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise ArtifactRejected("symlink", f"{ARTIFACT_FILE} is a symbolic link")
    try:  # O_NOFOLLOW closes the race between lstat and open; O_NONBLOCK keeps a FIFO from hanging us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ArtifactRejected("symlink", f"cannot open {ARTIFACT_FILE} without following links: {e}") from e
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = ("not_regular", f"{ARTIFACT_FILE} is not a regular file")
    elif st.st_nlink != 1:
        problem = ("hard_link", f"{ARTIFACT_FILE} has {st.st_nlink} hard links; it must have exactly one")
    elif st.st_size > limits.max_file_bytes:
        problem = ("too_large", f"{ARTIFACT_FILE} is {st.st_size} bytes; the cap is {limits.max_file_bytes}")
    if problem:
        os.close(fd)
        raise ArtifactRejected(*problem)
    return os.fdopen(fd, "rb"), st.st_size


def sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(MiB):
        digest.update(chunk)
    f.seek(0)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# 2. The zip archive
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """An opened, layout-checked archive: members by their path below the root folder."""

    zf: zipfile.ZipFile
    root: str
    members: dict[str, zipfile.ZipInfo]

    def read(self, name: str, cap: int) -> bytes:
        info = self.members[name]
        try:
            with self.zf.open(info) as f:  # ZipExtFile never yields more than the declared size
                data = f.read(cap + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            # header/directory name mismatch, bad CRC, truncated or corrupt deflate stream
            raise ArtifactRejected("member_corrupt", f"{name}: {type(e).__name__}: {e}") from e
        if len(data) > cap or len(data) != info.file_size:
            raise ArtifactRejected(
                "member_size", f"{name}: read {len(data)} bytes, declared {info.file_size}"
            )
        return data


def inspect_archive(f: BinaryIO, limits: ArtifactLimits) -> Archive:
    """Check the zip's structure and member set without decompressing anything."""
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise ArtifactRejected("not_a_zip", f"{ARTIFACT_FILE} is not a readable zip archive: {e}") from e
    infos = zf.infolist()
    if not infos or len(infos) > limits.max_members:
        raise ArtifactRejected("member_count", f"{len(infos)} members; expected 1..{limits.max_members}")
    members: dict[str, zipfile.ZipInfo] = {}
    roots: set[str] = set()
    total = compressed = 0
    for info in infos:
        name = info.filename
        if name.startswith("/") or "\\" in name or "\x00" in name or not _MEMBER_RE.fullmatch(name):
            raise ArtifactRejected("member_path", f"unsafe member path {name!r}")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or len(parts) < 2:
            raise ArtifactRejected("member_path", f"unsafe member path {name!r}")
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: the type is unspecified
            kind = "symlink" if stat.S_ISLNK(mode) else "non-regular"
            raise ArtifactRejected(
                "member_type", f"{name!r} is a {kind} entry; only regular files are allowed"
            )
        if info.flag_bits & 0x1:
            raise ArtifactRejected("member_encrypted", f"{name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArtifactRejected(
                "member_compression", f"{name!r} uses compression method {info.compress_type}"
            )
        if info.file_size > limits.max_member_bytes:
            raise ArtifactRejected(
                "member_size", f"{name!r} declares {info.file_size} bytes; cap {limits.max_member_bytes}"
            )
        if (
            info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
            and info.file_size > MiB
        ):
            raise ArtifactRejected(
                "zip_bomb",
                f"{name!r} expands {info.compress_size} -> {info.file_size} bytes; "
                f"ratio cap {limits.max_compression_ratio}",
            )
        total += info.file_size
        compressed += info.compress_size
        roots.add(parts[0])
        rel = "/".join(parts[1:])
        if rel in members:
            raise ArtifactRejected("member_duplicate", f"{name!r} appears twice")
        members[rel] = info
    if total > limits.max_total_uncompressed_bytes:
        raise ArtifactRejected(
            "zip_bomb", f"members expand to {total} bytes; cap {limits.max_total_uncompressed_bytes}"
        )
    if total > MiB and total > limits.max_compression_ratio * max(compressed, 1):
        raise ArtifactRejected("zip_bomb", f"archive expands {compressed} -> {total} bytes")
    if len(roots) != 1 or not _ROOT_RE.fullmatch(next(iter(roots))):
        raise ArtifactRejected("member_path", f"expected one root folder, found {sorted(roots)[:5]}")
    missing = sorted(REQUIRED_MEMBERS - members.keys())
    if missing:
        raise ArtifactRejected("missing_members", f"not a torch.export archive: missing {missing}")
    unexpected = sorted(
        n
        for n in members
        if n not in REQUIRED_MEMBERS | OPTIONAL_MEMBERS
        and not _WEIGHT_RE.fullmatch(n)
        and not _CONSTANT_RE.fullmatch(n)
    )
    if unexpected:
        raise ArtifactRejected(
            "unexpected_members", f"members outside the torch.export layout: {unexpected[:10]}"
        )
    archive = Archive(zf, next(iter(roots)), members)
    for name, expected in (("archive_format", b"pt2"), ("archive_version", b"0"), ("byteorder", b"little")):
        if archive.read(name, 64).strip() != expected:
            raise ArtifactRejected("archive_header", f"{name} must be {expected!r}")
    return archive


def scan_sample_inputs(archive: Archive, limits: ArtifactLimits) -> None:
    """Statically vet the only pickle in the archive (never loaded) and refuse any foreign global."""
    name = "data/sample_inputs/model.pt"
    if name not in archive.members:
        return
    blob = archive.read(name, limits.max_sample_inputs_bytes)
    try:
        inner = zipfile.ZipFile(io.BytesIO(blob))
        pickles = [i for i in inner.infolist() if i.filename.endswith(".pkl")]
        if not pickles:
            raise ArtifactRejected("pickle_payload", f"{name} holds no torch.save pickle")
        for info in pickles:
            if info.file_size > limits.max_sample_inputs_bytes:
                raise ArtifactRejected("pickle_payload", f"{name}:{info.filename} is too large")
            _scan_pickle(inner.read(info), f"{name}:{info.filename}")
    except (zipfile.BadZipFile, ValueError, EOFError) as e:  # pickletools raises ValueError on garbage
        raise ArtifactRejected("pickle_payload", f"{name} is not a plain torch.save archive: {e}") from e


def _scan_pickle(data: bytes, where: str) -> None:
    # A conservative, non-executing walk: STACK_GLOBAL must take its two operands straight from string
    # pushes (or memo reads of strings); anything cleverer is refused rather than reasoned about.
    pushed: list[str | None] = []  # what each op put on the stack, when it is a known string
    memo: dict[int, str | None] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _PICKLE_REFUSED_OPS:
            raise ArtifactRejected("pickle_payload", f"{where}: opcode {name} is not allowed")
        if name == "GLOBAL":
            qual = str(arg).replace(" ", ".")
        elif name == "STACK_GLOBAL":
            module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            if module is None or attr is None:
                raise ArtifactRejected("pickle_payload", f"{where}: STACK_GLOBAL with computed operands")
            qual = f"{module}.{attr}"
        else:
            qual = ""
        if qual and qual not in _PICKLE_GLOBALS:
            raise ArtifactRejected("pickle_payload", f"{where}: refers to {qual}, which could execute code")
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[arg if isinstance(arg, int) else len(memo)] = (
                pushed[-1] if pushed else None
            )  # MEMOIZE: next slot
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg) if isinstance(arg, int) else None)
        elif name not in ("PROTO", "FRAME", "STOP"):
            pushed.append(
                str(arg)
                if isinstance(arg, str) and name.endswith(("UNICODE", "STRING", "UNICODE8"))
                else None
            )


# ----------------------------------------------------------------------------------------------
# 3. Weights and constants from raw bytes (the program JSON is `program`'s)
# ----------------------------------------------------------------------------------------------


def _load_payloads(
    archive: Archive, config_name: str, kind: str, pattern: re.Pattern[str], limits: ArtifactLimits
) -> dict[str, torch.Tensor]:
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT

    try:
        config = json.loads(archive.read(config_name, limits.max_json_bytes))["config"]
        if not isinstance(config, dict):
            raise TypeError("config is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactRejected("payload_config", f"{config_name} is malformed: {e}") from e
    base = config_name.rsplit("/", 1)[0]
    flat: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for fqn, meta in config.items():
        try:
            path = f"{base}/{meta['path_name']}"
            if meta.get("use_pickle"):
                raise ArtifactRejected(
                    "pickle_payload", f"{kind} {fqn!r} is stored as a pickle; only raw tensors are accepted"
                )
            if not pattern.fullmatch(path) or path not in archive.members:
                raise ArtifactRejected(
                    "payload_config", f"{kind} {fqn!r} points at {path!r}, which is not a payload member"
                )
            tm = meta["tensor_meta"]
            dtype = _SERIALIZE_TO_TORCH_DTYPE[tm["dtype"]]
            if dtype not in _ALLOWED_DTYPES or _SERIALIZE_TO_TORCH_LAYOUT[tm["layout"]] != torch.strided:
                raise ArtifactRejected(
                    "payload_config", f"{kind} {fqn!r} has dtype {dtype} / a non-strided layout"
                )
            sizes = [int(s["as_int"]) for s in tm["sizes"]]
            strides = [int(s["as_int"]) for s in tm["strides"]]
            offset = int(tm["storage_offset"]["as_int"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactRejected("payload_config", f"{kind} {fqn!r} has malformed metadata: {e!r}") from e
        if path not in flat:
            data = bytearray(archive.read(path, limits.max_member_bytes))
            if len(data) % dtype.itemsize:
                raise ArtifactRejected("payload_config", f"{path} is not a whole number of {dtype} elements")
            flat[path] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        storage = flat[path]
        if storage.dtype != dtype:
            raise ArtifactRejected("payload_config", f"{path} is read as two different dtypes")
        if len(sizes) != len(strides) or min([*sizes, *strides, offset, 0]) < 0:
            raise ArtifactRejected("payload_config", f"{kind} {fqn!r} has an invalid shape/stride")
        span = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1
        if 0 not in sizes and span > storage.numel():
            raise ArtifactRejected("payload_config", f"{kind} {fqn!r} reaches past the end of {path}")
        tensor = (
            storage.as_strided(sizes, strides, offset) if 0 not in sizes else torch.empty(sizes, dtype=dtype)
        )
        out[fqn] = torch.nn.Parameter(tensor, requires_grad=False) if meta.get("is_param") else tensor
    orphans = sorted(n for n in archive.members if pattern.fullmatch(n) and n not in flat)
    if orphans:
        raise ArtifactRejected("unexpected_members", f"payload members no {kind} refers to: {orphans[:10]}")
    return out


def load_tensors(
    archive: Archive, limits: ArtifactLimits
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weights (state dict) and the constants, each rebuilt from its raw bytes."""
    weights = _load_payloads(archive, "data/weights/model_weights_config.json", "weight", _WEIGHT_RE, limits)
    constants = _load_payloads(
        archive, "data/constants/model_constants_config.json", "constant", _CONSTANT_RE, limits
    )
    return weights, constants
