"""The loaded graph: the operator allow-list, the signature contract, and running it as a plain function.

``program`` calls these on the deserialized ``ExportedProgram`` (and ``check_op_name`` on every operator
name in the program JSON before torch sees it); the evaluator uses ``as_logits_fn`` and the state
snapshot. Every refusal is an ``ArtifactRejected`` naming the check.

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

import math
import operator
import re
from collections import Counter
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from sandbox.incontainer.archive import ArtifactRejected

# --- the operator allow-list ---
_OPERATORS = "getitem add sub mul floordiv truediv mod pow neg pos eq ne lt le gt ge and_ or_".split()
_SYM_FUNCTIONS = "sym_max sym_min sym_not sym_float sym_int sym_ite".split()
_HOPS = frozenset("cond while_loop map_impl scan wrap_with_set_grad_enabled wrap_with_autocast".split())
TARGET_RE = re.compile(
    r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
    rf"|_operator\.({'|'.join(_OPERATORS)})|torch\.({'|'.join(_SYM_FUNCTIONS)})|math\.trunc"
    rf"|torch\.ops\.higher_order\.({'|'.join(_HOPS)})"
)
# Pure int/bool arithmetic torch emits on SymInts for dynamic shapes (e.g. B * T in a view).
SYM_CALLABLES: frozenset[Any] = frozenset(
    [*(getattr(operator, n) for n in _OPERATORS), *(getattr(torch, n) for n in _SYM_FUNCTIONS), math.trunc]
)


class Contract(BaseModel):
    """What the graph must compute: int64 (B, seq_len) -> float (B, seq_len, vocab_size), B in 1..max_batch."""

    model_config = ConfigDict(frozen=True)
    seq_len: int
    vocab_size: int
    max_batch: int


def check_op_name(target: str) -> None:
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
    if target in SYM_CALLABLES:
        return f"{getattr(target, '__module__', None) or 'builtins'}.{target.__name__}"
    raise ArtifactRejected("op_not_allowed", f"call target {target!r} is not on the allow-list")


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
        elif node.target is not operator.getitem and node.target not in SYM_CALLABLES:
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
