"""The program: ``models/model.json`` sanitised before torch parses it, then deserialized and loaded.

``validate_artifact`` runs ``archive``'s checks and sanitises the JSON; ``load_program`` hands torch's
JSON deserializer only what passed and checks the result with ``graph``. ``load_artifact`` does both.

  * ``models/model.json`` is parsed as JSON and sanitised BEFORE torch sees it: node metadata
    (stack traces, annotations) is dropped, every string must be short printable ASCII, every operator
    name must be on the allow-list, every symbolic expression must be a small arithmetic AST of
    allow-listed sympy constructors (torch hands it to ``sympy.sympify``, which is ``eval``), and
    ``guards_code`` must be empty;
  * only then is torch's JSON deserializer (``ExportedProgramDeserializer``, a private torch 2.13 API,
    pinned by pyproject) run, and the resulting fx graphs are checked again object by object;
  * the program is functionalized (``run_decompositions({})``, no op decomposed) before its signature
    is checked: torch 2.13 exports "training IR", where ``self.buf.add_(1)`` is an in-place op on the
    buffer's placeholder and ``buffers_to_mutate`` stays EMPTY. Functionalized, every mutation of a
    parameter, buffer or the input is an explicit output, and is refused. (A graph that counts its
    calls could otherwise behave during the probes and cheat during scoring.) A graph with no mutating
    operator, no control flow and nothing but float32 is already functional and skips the retrace
    (``graph.already_functional`` says why that is sound).

What is unpickled: nothing. What is executed from the archive: nothing but the graph's allow-listed
operators, once the evaluator runs it; the code fx generates for it comes from node names torch
sanitises and from constants it ``repr``s, after this module dropped every free-text field.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sandbox.incontainer import archive as arc
from sandbox.incontainer import graph
from sandbox.incontainer.archive import ArtifactLimits, ArtifactRejected
from sandbox.incontainer.graph import Contract

log = logging.getLogger(__name__)

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
                if not isinstance(target, str) or not graph.TARGET_RE.fullmatch(target):
                    raise ArtifactRejected(
                        "op_not_allowed", f"operator {str(target)[:200]!r} is not on the allow-list"
                    )
                graph.check_op_name(target)
        if "expr_str" in obj:
            _check_sym_expr(obj["expr_str"])
        for key, value in obj.items():
            _walk(key, depth + 1)
            _walk(value, depth + 1)


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
    f, size = arc.open_artifact(artifact_dir, limits)
    with f:
        digest = arc.sha256_of(f)
        archive = arc.inspect_archive(f, limits)
        arc.scan_sample_inputs(archive, limits)
        doc = sanitize_program_json(archive.read("models/model.json", limits.max_json_bytes))
        state_dict, constants = arc.load_tensors(archive, limits)
    return ValidatedArtifact(digest, size, doc, state_dict, constants)


def load_program(validated: ValidatedArtifact, contract: Contract, device: str = "cpu") -> LoadedArtifact:
    """Step 5: deserialize, enforce the op allow-list, functionalize, check the signature, move to ``device``.

    torch 2.13 exports "training IR", where mutating a buffer is an in-place op on its placeholder and
    ``buffers_to_mutate`` stays empty. ``run_decompositions({})`` (functionalization only, no op
    decomposed) turns every mutation of a parameter, buffer or the input into an explicit output, which
    the signature check then refuses. The functional program is the one that runs.
    """
    program = _deserialize(validated.program_json, validated.state_dict, validated.constants)
    graph.check_ops(
        program
    )  # before anything is traced: only allow-listed ops ever run, even on fake tensors
    if graph.already_functional(program):
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


def _loaded(
    program: torch.export.ExportedProgram,
    validated: ValidatedArtifact,
    contract: Contract,
    device: str,
    *,
    functionalized: bool,
) -> LoadedArtifact:
    ops = graph.check_ops(program)
    graph.check_signature(program, contract)
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
