"""The evaluator skips the functionalizing retrace only where it could not change anything.

Property: ``graph.already_functional`` is True only for a graph of non-mutating aten/prims calls
(plus getitem and SymInt arithmetic) with no control-flow subgraph, whose claimed float values and
weights are all float32. Such a graph is loaded without the retrace (a second of one core saved per
trial) and computes exactly what the retraced graph computes. Everything else takes the full path.
What the short path reads from the archive's own metadata (the output's shape) is checked again on
every call at run time, so a false claim there gets the artifact rejected, never scored.
Attacks defeated: a graph that mutates its own state (to tell probes from scoring) slipping past
functionalization through the short path; metadata forged to claim the contract's output shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from sandbox.incontainer import graph, program
from sandbox.incontainer.archive import LIMITS as ALL_LIMITS
from sandbox.incontainer.evaluate import evaluate
from tests.evil_models import FAST_PROFILE, Honest, edit_json, export, exported, rewrite_zip

CONTRACT = graph.Contract(
    seq_len=FAST_PROFILE.max_seq_len,
    vocab_size=FAST_PROFILE.vocab_size,
    max_batch=FAST_PROFILE.eval_batch_size,
)
LIMITS = ALL_LIMITS["tiny"]


def _load(folder: Path, *, short_path: bool, monkeypatch: pytest.MonkeyPatch) -> program.LoadedArtifact:
    with monkeypatch.context() as m:
        if not short_path:
            m.setattr(graph, "already_functional", lambda program: False)
        return program.load_artifact(folder, CONTRACT, LIMITS)


def test_an_honest_float32_graph_skips_the_retrace_and_computes_the_same_logits(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = exported("honest", tmp_path_factory.getbasetemp())
    short = _load(folder, short_path=True, monkeypatch=monkeypatch)
    full = _load(folder, short_path=False, monkeypatch=monkeypatch)
    assert not short.functionalized and full.functionalized
    assert short.float_dtypes == full.float_dtypes == ("float32",)
    x = torch.randint(
        0, FAST_PROFILE.vocab_size, (3, FAST_PROFILE.max_seq_len), generator=torch.Generator().manual_seed(1)
    )
    a = graph.as_logits_fn(short.program, CONTRACT)(x)
    b = graph.as_logits_fn(full.program, CONTRACT)(x)
    assert torch.equal(a, b)


def test_a_graph_that_mutates_its_state_takes_the_full_path_and_is_rejected(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path
) -> None:
    folder = exported("buffer_mutation", tmp_path_factory.getbasetemp())
    validated = program.validate_artifact(folder, LIMITS)
    deserialized = program._deserialize(validated.program_json, validated.state_dict, validated.constants)
    assert not graph.already_functional(deserialized)  # the in-place add_ on its buffer
    report = evaluate(FAST_PROFILE, folder, tiny_data)
    assert report["check"] == "artifact:state_mutation" and report["val_bpb"] is None


def test_a_low_precision_graph_takes_the_full_path(tmp_path: Path) -> None:
    export(Honest().to(torch.bfloat16), tmp_path)
    loaded = program.load_artifact(tmp_path, CONTRACT, LIMITS)
    assert loaded.functionalized and "bfloat16" in loaded.float_dtypes


def test_metadata_forged_to_claim_the_contract_is_caught_when_the_graph_runs(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_data: Path
) -> None:
    real_vocab = FAST_PROFILE.vocab_size + 1  # what the wrong_vocab model really returns

    def forge(doc: dict[str, Any]) -> None:  # its output claims the contract's V instead
        for meta in doc["graph_module"]["graph"]["tensor_values"].values():
            sizes = meta["sizes"]
            if len(sizes) == 3 and sizes[-1] == {"as_int": real_vocab}:  # (B, T, V) values only
                sizes[-1] = {"as_int": FAST_PROFILE.vocab_size}
                meta["strides"][0] = {"as_int": FAST_PROFILE.max_seq_len * FAST_PROFILE.vocab_size}
                meta["strides"][1] = {"as_int": FAST_PROFILE.vocab_size}

    wrong = exported("wrong_vocab", tmp_path_factory.getbasetemp()) / "model.pt2"
    rewrite_zip(wrong, tmp_path / "a" / "model.pt2", edit_json("models/model.json", forge))
    loaded = program.load_artifact(
        tmp_path / "a", CONTRACT, LIMITS
    )  # the forged claim passes the signature check
    assert not loaded.functionalized
    report = evaluate(dataclasses.replace(FAST_PROFILE), tmp_path / "a", tiny_data)
    assert report["status"] == "rejected" and report["val_bpb"] is None
    assert report["check"] == "runtime:bad_logits", report["reason"]
    assert f"{real_vocab})" in report["reason"]
