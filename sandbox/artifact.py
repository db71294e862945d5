"""Validate and safely load the candidate's artifact: a torch.export ``model.pt2`` and nothing else.

The artifact is written by untrusted code, so every byte of it is hostile until checked. This module
turns it into an ``ExportedProgram`` whose graph uses only allow-listed operators and whose signature
is the contract's, or raises ``ArtifactRejected`` naming the check that failed. It never imports
candidate code and never unpickles anything.

Why not ``torch.export.load`` (read in torch 2.13's ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``): it is not safe on untrusted input.
  1. ``data/sample_inputs/model.pt`` is a ``torch.save`` pickle; ``deserialize_torch_artifact`` tries
     ``torch.load(weights_only=True)`` and, on failure, FALLS BACK TO ``weights_only=False``: any
     pickle payload (``os.system`` via REDUCE) runs.
  2. Weights or constants flagged ``use_pickle`` are loaded with ``weights_only=False``; ``opaque_obj_*``
     constants with ``pickle.loads``; ``custom_obj_*`` with the TorchScript unpickler.
  3. Any member under ``data/aotinductor/`` makes it load a compiled shared library.
  4. Symbolic shapes are parsed with ``sympy.sympify``, which is ``eval``.
  5. ``ExportedProgram.module()`` ``exec``s the serialized ``guards_code`` when example inputs exist.

What this loader does instead, in order:
  * the folder holds exactly one regular file, ``model.pt2`` (no symlink, no hard link, size-capped),
    read through one ``O_NOFOLLOW`` descriptor (hashed and parsed from the same open file);
  * the zip is read with Python's ``zipfile`` only: one safe root folder, no absolute/``..``/odd paths,
    no symlink or directory entries, no duplicates, no encryption, stored or deflated only, caps on
    member count, member size, total size and compression ratio (zip bombs), and exactly torch 2.13's
    ``torch.export.save`` member set (anything else, e.g. ``extra/`` or ``data/aotinductor/``, is refused);
  * the one pickle, ``data/sample_inputs/model.pt``, is scanned statically with ``pickletools`` (nothing
    executes) and refused unless every global it names is in a tiny allow-list; it is then IGNORED:
    the program is deserialized without example inputs, so no pickle is ever loaded and no guards code
    is generated;
  * weights and constants are rebuilt from raw little-endian bytes with bounds-checked ``as_strided``;
    any ``use_pickle`` payload is refused;
  * ``models/model.json`` is parsed as JSON and sanitised BEFORE torch sees it: node metadata
    (stack traces, annotations) is dropped, every string must be short printable ASCII, every operator
    name must be on the allow-list, every symbolic expression must be a small arithmetic AST of
    allow-listed sympy constructors, and ``guards_code`` must be empty;
  * only then is torch's JSON deserializer (``ExportedProgramDeserializer``, a private torch 2.13 API,
    pinned by pyproject) run, and the resulting fx graphs are checked again object by object;
  * the program is functionalized (``run_decompositions({})``, no op decomposed) before its signature
    is checked: torch 2.13 exports "training IR", where ``self.buf.add_(1)`` is an in-place op on the
    buffer's placeholder and ``buffers_to_mutate`` stays EMPTY. Functionalized, every mutation of a
    parameter, buffer or the input is an explicit output, and is refused. (A graph that counts its
    calls could otherwise behave during the probes and cheat during scoring.) A graph with no mutating
    operator, no control flow and nothing but float32 is already functional and skips the retrace
    (``already_functional`` says why that is sound);

What is unpickled: nothing. What is executed from the archive: nothing but the graph's allow-listed
operators, once the evaluator runs it; the code fx generates for it comes from node names torch
sanitises and from constants it ``repr``s, after this module dropped every free-text field.

Operator allow-list: ``OpOverload``s of the ``aten`` and ``prims`` namespaces (minus a deny-list:
``from_file``, which would let a graph read the validation split off the evaluator's disk; ``empty*``,
``resize*`` and ``set_``, which expose uninitialized memory that may hold validation tokens; ``_print``
and inductor's RNG prims), ``operator.getitem``,
the pure SymInt arithmetic torch emits for dynamic shapes (``operator.mul`` on sizes, ``sym_max``, ...),
and the control-flow higher-order ops (cond, while_loop, map, scan, wrap_with_*), whose subgraphs are
checked recursively. Ops tagged ``nondeterministic_seeded`` (rand*, bernoulli, dropout, ...) are refused
unless the call site switches the randomness off with a literal (``dropout_p=0.0`` in attention, which
torch tags too; ``train=False``): a graph that draws random numbers could answer the evaluator's probes
differently from its scoring calls. Custom ops, other namespaces and Python callables are refused with
the operator named. ``rand_like`` and friends are not the only way to be nondeterministic (data races in
a kernel are another); the determinism probe measures what is left.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import math
import operator
import os
import pickletools
import re
import stat
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from pydantic import BaseModel, ConfigDict

from sandbox.constants import ARTIFACT_FILE

log = logging.getLogger(__name__)

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

# --- the operator allow-list ---
_OPERATORS = "getitem add sub mul floordiv truediv mod pow neg pos eq ne lt le gt ge and_ or_".split()
_SYM_FUNCTIONS = "sym_max sym_min sym_not sym_float sym_int sym_ite".split()
_HOPS = frozenset("cond while_loop map_impl scan wrap_with_set_grad_enabled wrap_with_autocast".split())
_TARGET_RE = re.compile(
    r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
    rf"|_operator\.({'|'.join(_OPERATORS)})|torch\.({'|'.join(_SYM_FUNCTIONS)})|math\.trunc"
    rf"|torch\.ops\.higher_order\.({'|'.join(_HOPS)})"
)
# Pure int/bool arithmetic torch emits on SymInts for dynamic shapes (e.g. B * T in a view).
_SYM_CALLABLES: frozenset[Any] = frozenset(
    [*(getattr(operator, n) for n in _OPERATORS), *(getattr(torch, n) for n in _SYM_FUNCTIONS), math.trunc]
)
# sympy constructors torch writes in expr_str (srepr form), plus torch.utils._sympy functions.
_SYMPY_NAMES = frozenset(
    """Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs floor ceiling Eq Ne Lt Le Gt Ge
    StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not true false oo zoo
    nan FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv IntTrueDiv
    FloatTrueDiv TruncToInt TruncToFloat RoundToInt ToFloat Identity PowByNatural FloatPow BooleanTrue
    BooleanFalse Infinity NegativeInfinity""".split()
)
_EXPR_NODES = tuple(
    getattr(ast, n)
    for n in "Expression Call Name Load Constant keyword BinOp UnaryOp Add Sub Mult Div FloorDiv "
    "Mod USub UAdd Pow".split()
)
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


@dataclass(frozen=True)
class LoadedArtifact:
    """A validated, loaded program and what the report records about it."""

    program: torch.export.ExportedProgram
    sha256: str
    size_bytes: int
    param_count: int
    ops: dict[str, int]  # operator name -> number of call sites, subgraphs included
    float_dtypes: tuple[str, ...]  # floating dtypes of the graph's values (sets the probes' tolerance)
    functionalized: bool = True  # False: already functional, the retrace was skipped (already_functional)

    @property
    def low_precision_eps(self) -> float:
        """Machine epsilon of the least precise float dtype the graph computes in."""
        eps = [torch.finfo(getattr(torch, d)).eps for d in self.float_dtypes]
        return max(eps, default=torch.finfo(torch.float32).eps)


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
# 3. models/model.json, sanitised before torch parses it
# ----------------------------------------------------------------------------------------------

_MAX_STRING = 65536


def sanitize_program_json(raw: bytes) -> dict[str, Any]:
    """Parse the serialized program and vet every part torch would interpret; drop what it would print."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactRejected("program_json", f"models/model.json is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise ArtifactRejected("program_json", "models/model.json has no graph_module")
    if doc.get("guards_code"):  # ExportedProgram.module() would exec these strings
        raise ArtifactRejected("program_json", "guards_code must be empty")
    verifiers = doc.get("verifiers", [])
    if not isinstance(verifiers, list) or not set(verifiers) <= {"", "ATEN", "TRAINING"}:
        raise ArtifactRejected("program_json", f"unknown verifiers {verifiers!r}")
    _walk(doc, depth=0)
    return doc


def _walk(obj: Any, depth: int) -> None:
    if depth > 200:
        raise ArtifactRejected("program_json", "models/model.json is nested too deeply")
    if isinstance(obj, str):
        if len(obj) > _MAX_STRING or not obj.isascii() or not obj.isprintable():
            raise ArtifactRejected("program_json", f"string {obj[:60]!r} is too long or not printable ASCII")
    elif isinstance(obj, list):
        for item in obj:
            _walk(item, depth + 1)
    elif isinstance(obj, dict):
        if "metadata" in obj:  # stack traces and annotations end up in generated code comments
            obj["metadata"] = {}
        for key in ("target", "as_operator"):  # torch resolves these by getattr on torch/operator/math
            if key in obj:
                target = obj[key]
                if not isinstance(target, str) or not _TARGET_RE.fullmatch(target):
                    raise ArtifactRejected(
                        "op_not_allowed", f"operator {str(target)[:200]!r} is not on the allow-list"
                    )
                _check_op_name(target)
        if "expr_str" in obj:
            _check_sym_expr(obj["expr_str"])
        for key, value in obj.items():
            _walk(key, depth + 1)
            _walk(value, depth + 1)


def _check_op_name(target: str) -> None:
    if target.startswith(("torch.ops.aten.", "torch.ops.prims.")):
        _, _, ns, op, overload = target.split(".")
        packet = getattr(getattr(torch.ops, ns), op, None)
        if not isinstance(getattr(packet, overload, None), torch._ops.OpOverload):
            raise ArtifactRejected("op_not_allowed", f"operator {target} does not exist in this torch")
        _check_not_denied(ns, op)


def _check_not_denied(namespace: str, name: str) -> None:
    """aten/prims ops that reach outside the graph's inputs and weights, whatever their arguments."""
    why = None
    if name == "from_file":
        why = "reads a file (the evaluator's disk holds the validation split)"
    elif "empty" in name or name.startswith(("resize", "_resize")) or name in ("set", "set_"):
        why = "exposes uninitialized or foreign memory (which may hold validation tokens)"
    elif name == "_print" or (namespace == "prims" and name.startswith("inductor_")):
        why = "is a side effect or an RNG internal, not a computation on the input"
    if why:
        raise ArtifactRejected("op_not_allowed", f"operator {namespace}.{name} {why}")


def _check_deterministic(op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse ops that draw random numbers, unless this call site switches the randomness off literally
    (dropout_p=0 in attention, train=False in dropout/RNNs, p=0 in dropout)."""
    if torch.Tag.nondeterministic_seeded not in op.tags:
        return
    values: dict[str, Any] = {}
    for i, a in enumerate(op._schema.arguments):
        if a.name in kwargs:
            values[a.name] = kwargs[a.name]
        elif i < len(args) and not a.kwarg_only:
            values[a.name] = args[i]
        elif a.has_default_value():
            values[a.name] = a.default_value
    off = (
        values.get("train") is False
        or values.get("training") is False
        or ("dropout_p" in values and _is_literal_zero(values["dropout_p"]))
        or ("dropout" in op._schema.name and _is_literal_zero(values.get("p")))
    )
    if not off:
        raise ArtifactRejected(
            "op_random",
            f"operator {op} draws random numbers here; a random graph could answer the probes "
            "differently from the scoring pass, so it is refused (export in eval mode, without dropout)",
        )


def _is_literal_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _check_sym_expr(expr: Any) -> None:
    """torch hands expr_str to ``sympy.sympify``, which is ``eval``: allow only a small arithmetic AST.

    Calls only of allow-listed sympy constructors, names only of those or of shape symbols (``s77``),
    string literals only symbol names or numbers, no attributes or subscripts, and exponents only small
    integer literals (``Pow(10, 10**18)`` would be evaluated eagerly: a denial of service).
    """
    if not isinstance(expr, str) or len(expr) > 4096:
        raise ArtifactRejected("program_json", "symbolic expression is not a short string")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ArtifactRejected("program_json", f"symbolic expression {expr[:80]!r} does not parse") from e
    for node in ast.walk(tree):
        ok = isinstance(node, _EXPR_NODES)
        if isinstance(node, ast.Name):
            ok = node.id in _SYMPY_NAMES or _SYMBOL_RE.fullmatch(node.id) is not None
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else ""
            ok = func in _SYMPY_NAMES
            if func in ("Pow", "PowByNatural", "FloatPow"):
                ok = len(node.args) == 2 and _small_int_literal(node.args[1])
        elif isinstance(node, ast.Constant):
            value = node.value
            ok = (
                isinstance(value, bool | float)
                or (isinstance(value, int) and abs(value) < 2**63)
                or (isinstance(value, str) and _SYMBOL_OR_NUMBER_RE.fullmatch(value) is not None)
            )
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            ok = _small_int_literal(node.right)
        if not ok:
            raise ArtifactRejected(
                "program_json", f"symbolic expression {expr[:80]!r} is not plain arithmetic"
            )


_SYMBOL_RE = re.compile(r"[a-z]{1,8}\d{0,9}")
_SYMBOL_OR_NUMBER_RE = re.compile(r"[a-z]{1,8}\d{0,9}|[-+]?[0-9][0-9.eE+-]{0,40}")


def _small_int_literal(node: ast.expr) -> bool:
    """``3``, ``-3`` or ``Integer(3)`` with |value| <= 64."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer":
        node = node.args[0] if len(node.args) == 1 else node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= 64


# ----------------------------------------------------------------------------------------------
# 4. Weights and constants from raw bytes
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


# ----------------------------------------------------------------------------------------------
# 5. Deserialize, then check the graph and the signature object by object
# ----------------------------------------------------------------------------------------------


class Contract(BaseModel):
    """What the graph must compute: int64 (B, seq_len) -> float (B, seq_len, vocab_size), B in 1..max_batch."""

    model_config = ConfigDict(frozen=True)
    seq_len: int
    vocab_size: int
    max_batch: int


@dataclass(frozen=True)
class ValidatedArtifact:
    """Everything read from the archive, checked, but not yet handed to torch's deserializer."""

    sha256: str
    size_bytes: int
    program_json: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor]


def validate_artifact(artifact_dir: Path, limits: ArtifactLimits) -> ValidatedArtifact:
    """Steps 1-4: the folder, the zip, the pickle scan, the program JSON and the raw tensors."""
    f, size = open_artifact(artifact_dir, limits)
    with f:
        digest = sha256_of(f)
        archive = inspect_archive(f, limits)
        scan_sample_inputs(archive, limits)
        doc = sanitize_program_json(archive.read("models/model.json", limits.max_json_bytes))
        state_dict = _load_payloads(
            archive, "data/weights/model_weights_config.json", "weight", _WEIGHT_RE, limits
        )
        constants = _load_payloads(
            archive, "data/constants/model_constants_config.json", "constant", _CONSTANT_RE, limits
        )
    return ValidatedArtifact(digest, size, doc, state_dict, constants)


def load_program(validated: ValidatedArtifact, contract: Contract, device: str = "cpu") -> LoadedArtifact:
    """Step 5: deserialize, enforce the op allow-list, functionalize, check the signature, move to ``device``.

    torch 2.13 exports "training IR", where mutating a buffer is an in-place op on its placeholder and
    ``buffers_to_mutate`` stays empty. ``run_decompositions({})`` (functionalization only, no op
    decomposed) turns every mutation of a parameter, buffer or the input into an explicit output, which
    the signature check then refuses. The functional program is the one that runs.
    """
    program = _deserialize(validated.program_json, validated.state_dict, validated.constants)
    check_ops(program)  # before anything is traced: only allow-listed ops ever run, even on fake tensors
    if already_functional(program):
        return _loaded(program, validated, contract, device, functionalized=False)
    # The retrace would capture and symbolize a Python stack trace for every node it creates (the
    # evaluator's own frames, debugging metadata only): 15-20% of its CPU time. Off while it runs.
    emit_stack_traces = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():  # torch 2.13's own deprecation noise from deep-copying treespecs
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = program.run_decompositions({})
    except Exception as e:  # torch's tracer has no typed error contract for hostile graphs
        raise ArtifactRejected(
            "functionalize", f"the graph cannot be functionalized: {type(e).__name__}: {str(e)[:500]}"
        ) from e
    finally:
        torch.fx.config.do_not_emit_stack_traces = emit_stack_traces
    return _loaded(program, validated, contract, device, functionalized=True)


def already_functional(program: torch.export.ExportedProgram) -> bool:
    """True when functionalizing ``program`` could change nothing, so the retrace may be skipped.

    Functionalization exists to turn mutations into outputs, and in an exported graph a mutation can
    only be a call to an operator whose schema writes to an argument (``FunctionSchema.is_mutable``:
    ``add_``, ``copy_``, ``index_put_``, every ``out=`` variant, ...). A graph made only of calls to
    non-mutating ``OpOverload``s, ``getitem`` and SymInt arithmetic, with no control-flow subgraph, is
    therefore already functional, and ``run_decompositions({})`` would return the same computation
    (it would only expand composite operators such as ``chunk`` into the calls they make anyway): the
    retrace (symbolic shapes and fake tensors for every node, about a second of one core on the tiny
    profile's model, most of the evaluator's load time) buys nothing for it.

    What the retrace also gave, and how the short path keeps it: it recomputes every node's metadata,
    where the short path reads the metadata the archive claims. The signature check reads that
    metadata, and the evaluator checks the real output again on every call (dtype, shape, finiteness),
    so a false claim about the output gets the artifact rejected at run time, not scored. The probes'
    one dtype-dependent tolerance (a row run alone, ``low_precision_eps``) loosens for low-precision
    dtypes, so the short path is taken only when every claimed floating value and every weight is
    float32: a claim can then only make that tolerance tighter, never looser. Anything else (an
    in-place op, a control-flow subgraph, bf16 anywhere) takes the full retrace, as before.
    """
    for gm in program.graph_module.modules():
        if gm is not program.graph_module:
            return False  # a control-flow subgraph (check_ops allows only those as submodules)
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output"):
            pass
        elif node.op != "call_function":
            return False
        elif isinstance(node.target, torch._ops.OpOverload):
            if node.target._schema.is_mutable:
                return False
        elif node.target is not operator.getitem and node.target not in _SYM_CALLABLES:
            return False
        value = node.meta.get("val")
        values = value if isinstance(value, (list, tuple)) else (value,)
        if any(
            isinstance(v, torch.Tensor) and v.dtype.is_floating_point and v.dtype != torch.float32
            for v in values
        ):
            return False
    tensors = [*program.state_dict.values(), *program.constants.values()]
    return all(
        not (isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dtype != torch.float32)
        for t in tensors
    )


def _loaded(
    program: torch.export.ExportedProgram,
    validated: ValidatedArtifact,
    contract: Contract,
    device: str,
    *,
    functionalized: bool,
) -> LoadedArtifact:
    ops = check_ops(program)
    check_signature(program, contract)
    from torch.export.passes import move_to_device_pass

    program = move_to_device_pass(program, device)
    params = sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)
    dtypes = sorted(
        {
            str(v.dtype).removeprefix("torch.")
            for n in program.graph.nodes
            if isinstance(v := n.meta.get("val"), torch.Tensor) and v.dtype.is_floating_point
        }
    )
    log.info(
        "artifact %s: %d parameters, %d distinct ops, %s",
        validated.sha256[:12],
        params,
        len(ops),
        "functionalized" if functionalized else "already functional (no retrace)",
    )
    return LoadedArtifact(
        program=program,
        sha256=validated.sha256,
        size_bytes=validated.size_bytes,
        param_count=params,
        ops=ops,
        float_dtypes=tuple(dtypes),
        functionalized=functionalized,
    )


def load_artifact(
    artifact_dir: Path, contract: Contract, limits: ArtifactLimits, device: str = "cpu"
) -> LoadedArtifact:
    """Validate ``artifact_dir`` and return the program, or raise ``ArtifactRejected``."""
    return load_program(validate_artifact(artifact_dir, limits), contract, device)


def _deserialize(
    doc: dict[str, Any], state_dict: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]
) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
        # No example inputs: nothing is unpickled and ExportedProgram.module() generates no guards code.
        return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except ArtifactRejected:
        raise
    except Exception as e:  # torch's deserializer has no typed error contract for hostile input
        raise ArtifactRejected(
            "deserialize", f"torch could not deserialize the program: {type(e).__name__}: {str(e)[:500]}"
        ) from e


def check_ops(program: torch.export.ExportedProgram) -> dict[str, int]:
    """Enforce the operator allow-list on the graph and every subgraph; return the op census."""
    census: Counter[str] = Counter()
    for gm in program.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if node.op == "get_attr":
                if not isinstance(getattr(gm, node.target, None), torch.fx.GraphModule):
                    raise ArtifactRejected(
                        "op_not_allowed", f"get_attr {node.target!r} is not a control-flow subgraph"
                    )
                continue
            if node.op != "call_function":
                raise ArtifactRejected(
                    "op_not_allowed", f"node kind {node.op} ({node.target}) is not allowed"
                )
            census[_allowed_target(node.target, node.args, node.kwargs)] += 1
    return dict(sorted(census.items()))


def _allowed_target(target: Any, args: Any, kwargs: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        if target.namespace not in ("aten", "prims"):
            raise ArtifactRejected(
                "op_not_allowed", f"operator {target} is outside the aten/prims namespaces"
            )
        _check_not_denied(target.namespace, target._schema.name.split("::")[-1])
        _check_deterministic(target, tuple(args), dict(kwargs))
        return str(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        if target.name() not in _HOPS:
            raise ArtifactRejected("op_not_allowed", f"higher-order operator {target.name()} is not allowed")
        return f"higher_order.{target.name()}"
    if target in _SYM_CALLABLES:
        return f"{getattr(target, '__module__', None) or 'builtins'}.{target.__name__}"
    raise ArtifactRejected("op_not_allowed", f"call target {target!r} is not on the allow-list")


def check_signature(program: torch.export.ExportedProgram, contract: Contract) -> None:
    """One int64 (B, T) input with dynamic B, one float (B, T, V) output, no state mutation."""
    from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

    sig = program.graph_signature
    bad_inputs = [
        s.kind.name
        for s in sig.input_specs
        if s.kind
        not in (InputKind.USER_INPUT, InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    ]
    if bad_inputs:
        raise ArtifactRejected("signature_inputs", f"input kinds {bad_inputs} are not allowed")
    mutated = {**sig.buffers_to_mutate, **sig.parameters_to_mutate, **sig.user_inputs_to_mutate}
    if mutated:
        raise ArtifactRejected(
            "state_mutation", f"the graph mutates {sorted(mutated.values())[:10]}; it must be pure"
        )
    users = [s for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    if len(users) != 1 or not isinstance(users[0].arg, TensorArgument):
        raise ArtifactRejected(
            "signature_inputs", f"expected exactly one tensor input, found {len(users)} inputs"
        )
    outs = sig.output_specs
    if (
        len(outs) != 1
        or outs[0].kind != OutputKind.USER_OUTPUT
        or not isinstance(outs[0].arg, TensorArgument)
    ):
        raise ArtifactRejected(
            "signature_outputs", f"expected exactly one tensor output, found {[o.kind.name for o in outs]}"
        )
    spec = program.call_spec
    if spec.out_spec is None or not spec.out_spec.is_leaf():
        raise ArtifactRejected("signature_outputs", "forward must return a bare tensor, not a tuple or dict")
    nodes = {n.name: n for n in program.graph.nodes}
    x = nodes[users[0].arg.name].meta.get("val")
    y = nodes[outs[0].arg.name].meta.get("val")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ArtifactRejected("signature_inputs", "input or output carries no tensor metadata")
    if x.dtype != torch.int64 or x.dim() != 2 or x.shape[1] != contract.seq_len:
        raise ArtifactRejected(
            "input_dtype_shape",
            f"input is {x.dtype} {tuple(x.shape)}; expected int64 (B, {contract.seq_len})",
        )
    batch = x.shape[0]
    if not isinstance(batch, torch.SymInt):
        raise ArtifactRejected(
            "static_batch", f"the batch dimension is fixed at {batch}; export it as dynamic"
        )
    bounds = program.range_constraints.get(batch.node.expr)
    if bounds is None or bounds.lower > 1 or bounds.upper < contract.max_batch:
        raise ArtifactRejected(
            "batch_range", f"the batch dimension must admit 1..{contract.max_batch}, got {bounds}"
        )
    expected = (contract.seq_len, contract.vocab_size)
    if (
        not y.dtype.is_floating_point
        or y.dim() != 3
        or tuple(y.shape[1:]) != expected
        or not isinstance(y.shape[0], torch.SymInt)
        or y.shape[0].node.expr != batch.node.expr
    ):
        raise ArtifactRejected(
            "output_dtype_shape",
            f"output is {y.dtype} {tuple(y.shape)}; expected a float "
            f"(B, {contract.seq_len}, {contract.vocab_size}) with the input's B",
        )


def snapshot_state(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Copies of every parameter, buffer and constant, to prove after the run that nothing changed."""
    tensors = {**program.state_dict, **program.constants}
    return {k: v.detach().clone() for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def changed_state(program: torch.export.ExportedProgram, snapshot: dict[str, torch.Tensor]) -> list[str]:
    """Names of state tensors that differ from ``snapshot`` (defence in depth behind functionalization)."""
    tensors = {**program.state_dict, **program.constants}
    return sorted(k for k, v in snapshot.items() if not torch.equal(tensors[k].detach(), v))


class OutputBreaksContract(ValueError):
    """The graph returned something other than the contract's float (B, T, V) tensor at run time."""


def as_logits_fn(program: torch.export.ExportedProgram, contract: Contract | None = None) -> Any:
    """The graph as a plain callable (B, T) int64 -> (B, T, V), run without autograd.

    With ``contract``, every call's output is checked against it (a float tensor of the input's B and T
    and the contract's V), raising ``OutputBreaksContract``: the signature check reads the graph's
    metadata, and this makes what actually comes out the thing that counts (``already_functional``).
    """
    module = program.module(check_guards=False)

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = module(x)
        if contract is not None and (
            not isinstance(y, torch.Tensor)
            or not y.is_floating_point()
            or tuple(y.shape) != (*x.shape, contract.vocab_size)
        ):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise OutputBreaksContract(
                f"the graph returned {got} for an input of shape {tuple(x.shape)}; the contract is a "
                f"float (B, T, {contract.vocab_size})"
            )
        return y

    return logits_fn
