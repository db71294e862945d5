"""The evaluator scores only graphs with the contract's signature, built from allow-listed operators.

Property: a graph is scored only if it takes one int64 (B, T) input with a dynamic batch, returns one
float (B, T, V) tensor, mutates no state, and calls nothing but aten/prims operators, getitem, SymInt
arithmetic and control-flow higher-order ops, with no random draws. Each violation is rejected
under its own check name.
Attacks defeated: a custom operator whose kernel the evaluator cannot inspect (it could read files
or leak across rows), a Python callable smuggled in as a node target, aten ops that read the
evaluator's disk (``from_file``: the validation split is mounted there) or uninitialized memory
(freed buffers may hold validation tokens), state kept across calls
(counting calls to tell probes from scoring), random outputs (to pass probes by luck), extra
outputs, and shape or dtype tricks that would make the metric score something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.incontainer.evaluate import evaluate
from tests.evil_models import FAST_PROFILE, edit_json, exported, rewrite_zip


@pytest.mark.parametrize(
    ("model", "check", "named"),
    [
        ("float_input", "artifact:input_dtype_shape", "torch.float32"),
        ("wrong_vocab", "artifact:output_dtype_shape", "2049"),
        ("static_batch", "artifact:static_batch", "fixed"),
        ("buffer_mutation", "artifact:state_mutation", "calls"),
        ("extra_output", "artifact:signature_outputs", "USER_OUTPUT"),
        ("custom_op", "artifact:op_not_allowed", "evil_test.peek"),
        ("random_noise", "artifact:op_random", "rand_like"),
        ("uninitialized", "artifact:op_not_allowed", "empty_like"),
    ],
)
def test_graph_breaking_the_contract_is_rejected_with_its_own_reason(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, model: str, check: str, named: str
) -> None:
    report = evaluate(FAST_PROFILE, exported(model, tmp_path_factory.getbasetemp()), tiny_data)
    assert report["status"] == "rejected"
    assert report["check"] == check, report["reason"]
    assert named in report["reason"]
    assert report["val_bpb"] is None and report["probes"] == {}


@pytest.mark.parametrize(
    "target", ["torch.load", "builtins.exec", "torch.ops.aten.add", "torch.ops.evil.x.default"]
)
def test_forged_node_targets_are_refused_before_torch_resolves_them(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, target: str
) -> None:
    def forge(doc: dict[str, Any]) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    honest = exported("honest", tmp_path_factory.getbasetemp()) / "model.pt2"
    rewrite_zip(honest, tmp_path / "a" / "model.pt2", edit_json("models/model.json", forge))
    report = evaluate(FAST_PROFILE, tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:op_not_allowed"
    assert target in report["reason"]


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("torch.ops.aten.from_file.default", "aten.from_file"),
        ("torch.ops.aten.empty.memory_format", "aten.empty"),
    ],
)
def test_aten_ops_that_reach_outside_the_graph_are_refused(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, target: str, named: str
) -> None:
    """torch.export cannot trace from_file (no fake kernel), but a hand-written archive can name it."""

    def forge(doc: dict[str, Any]) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    honest = exported("honest", tmp_path_factory.getbasetemp()) / "model.pt2"
    rewrite_zip(honest, tmp_path / "a" / "model.pt2", edit_json("models/model.json", forge))
    report = evaluate(FAST_PROFILE, tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:op_not_allowed"
    assert named in report["reason"]
