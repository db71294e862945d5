"""The evaluator refuses artifacts whose bytes are hostile, and never runs code an artifact carries.

Property: whatever train.py leaves in its output folder, the evaluator either loads a plain
torch.export program from a lone regular ``model.pt2`` or writes a ``rejected`` report naming the
check; no pickle, shared library, sympy string or guards code from the artifact is executed.
Attacks defeated: a pickle payload in ``data/sample_inputs/model.pt`` (which ``torch.export.load``
itself executes: the control test shows it), pickled weights, code injected into symbolic shapes
or guards, symlinks and hard links (to read or alias files outside the folder), FIFOs (to hang the
evaluator), extra files and members (to smuggle loaders or data), missing members, zip bombs,
symlink and ``..`` members (zip-slip).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from sandbox.incontainer import archive, program
from sandbox.incontainer.evaluate import evaluate
from tests.evil_models import (
    FAST_PROFILE,
    append_raw_member,
    edit_json,
    exported,
    malicious_torch_save,
    rewrite_zip,
)

SAMPLE_INPUTS = "data/sample_inputs/model.pt"


@pytest.fixture(scope="session")
def honest_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("honest", tmp_path_factory.getbasetemp()) / "model.pt2"


def run(artifact_dir: Path, data: Path) -> dict[str, Any]:
    report = evaluate(FAST_PROFILE, artifact_dir, data)
    assert report["status"] == "rejected" and report["val_bpb"] is None
    return report


def test_pickle_payload_in_sample_inputs_is_refused_and_never_runs(
    tmp_path: Path, honest_pt2: Path, tiny_data: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = malicious_torch_save(f"touch {marker}")
    rewrite_zip(honest_pt2, tmp_path / "a" / "model.pt2", lambda n, b: payload if n == SAMPLE_INPUTS else b)
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:pickle_payload"
    assert "system" in report["reason"]
    assert not marker.exists(), "the pickle payload ran"


def test_control_torch_export_load_would_run_the_same_payload(tmp_path: Path, honest_pt2: Path) -> None:
    """Why the evaluator has its own loader: torch 2.13's load falls back to weights_only=False."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "a" / "model.pt2"
    rewrite_zip(
        honest_pt2, evil, lambda n, b: malicious_torch_save(f"touch {marker}") if n == SAMPLE_INPUTS else b
    )
    torch.export.load(evil)
    assert marker.exists(), (
        "torch.export.load no longer runs sample-input pickles: revisit the rationale in sandbox/incontainer/archive.py"
    )


def test_pickled_weights_are_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    def use_pickle(doc: dict[str, Any]) -> None:
        next(iter(doc["config"].values()))["use_pickle"] = True

    rewrite_zip(
        honest_pt2,
        tmp_path / "a" / "model.pt2",
        edit_json("data/weights/model_weights_config.json", use_pickle),
    )
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:pickle_payload"


@pytest.mark.parametrize("where", ["expr_str", "guards_code"])
def test_code_in_symbolic_shapes_or_guards_is_refused_and_never_runs(
    tmp_path: Path, honest_pt2: Path, tiny_data: Path, where: str
) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"

    def inject(doc: dict[str, Any]) -> None:
        if where == "guards_code":
            doc["guards_code"] = [code]
            return
        stack: list[Any] = [doc]
        while stack:  # replace every symbolic expression: torch would sympify (eval) each
            node = stack.pop()
            if isinstance(node, dict):
                if "expr_str" in node:
                    node["expr_str"] = code
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)

    rewrite_zip(honest_pt2, tmp_path / "a" / "model.pt2", edit_json("models/model.json", inject))
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:program_json"
    assert not marker.exists()


def test_symlinked_artifact_is_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink(honest_pt2, tmp_path / "a" / "model.pt2")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:symlink"


def test_hard_linked_artifact_is_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(honest_pt2, tmp_path / "a" / "model.pt2")
    os.link(tmp_path / "a" / "model.pt2", tmp_path / "alias")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:hard_link"


def test_fifo_is_refused_without_hanging(tmp_path: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    os.mkfifo(tmp_path / "a" / "model.pt2")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:not_regular"


def test_extra_files_next_to_the_artifact_are_refused(
    tmp_path: Path, honest_pt2: Path, tiny_data: Path
) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(honest_pt2, tmp_path / "a" / "model.pt2")
    (tmp_path / "a" / "loader.py").write_text("print('hi')\n")
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:extra_files" and "loader.py" in report["reason"]


def test_missing_artifact_is_refused(tmp_path: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:missing_artifact"


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.pt2").write_bytes(b"\x80\x04not a zip at all")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:not_a_zip"


@pytest.mark.parametrize(
    "member", ["extra/module_info.json", "data/aotinductor/model/model.so", "models/other.json"]
)
def test_extra_members_are_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path, member: str) -> None:
    rewrite_zip(honest_pt2, tmp_path / "a" / "model.pt2", add={member: b"{}"})
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:unexpected_members" and member in report["reason"]


def test_missing_members_are_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    rewrite_zip(
        honest_pt2, tmp_path / "a" / "model.pt2", lambda n, b: None if n == "models/model.json" else b
    )
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:missing_members" and "models/model.json" in report["reason"]


def test_zip_bomb_is_refused_before_decompression(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    rewrite_zip(
        honest_pt2,
        tmp_path / "a" / "model.pt2",
        add={"data/weights/weight_99": bytes(16 * 2**20)},
        compress=zipfile.ZIP_DEFLATED,
    )
    report = run(tmp_path / "a", tiny_data)
    assert report["check"] == "artifact:zip_bomb"


def test_total_size_cap_holds_even_without_compression(tmp_path: Path, honest_pt2: Path) -> None:
    limits = archive.LIMITS["tiny"].model_copy(update={"max_total_uncompressed_bytes": 1000})
    with honest_pt2.open("rb") as f, pytest.raises(archive.ArtifactRejected) as err:
        archive.inspect_archive(f, limits)
    assert err.value.check == "zip_bomb"


def test_oversized_artifact_file_is_refused(tmp_path: Path, honest_pt2: Path) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(honest_pt2, tmp_path / "a" / "model.pt2")
    limits = archive.LIMITS["tiny"].model_copy(update={"max_file_bytes": 1000})
    with pytest.raises(archive.ArtifactRejected) as err:
        archive.open_artifact(tmp_path / "a", limits)
    assert err.value.check == "too_large"


def test_symlink_member_is_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(honest_pt2, tmp_path / "a" / "model.pt2")
    root = zipfile.ZipFile(honest_pt2).namelist()[0].split("/")[0]
    info = zipfile.ZipInfo(f"{root}/data/constants/tensor_0")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    append_raw_member(tmp_path / "a" / "model.pt2", info, b"/etc/passwd")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:member_type"


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "model/../../x"])
def test_path_traversal_members_are_refused(
    tmp_path: Path, honest_pt2: Path, tiny_data: Path, name: str
) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(honest_pt2, tmp_path / "a" / "model.pt2")
    append_raw_member(tmp_path / "a" / "model.pt2", zipfile.ZipInfo(name), b"x")
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:member_path"


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('id')",
        "s0.__class__",
        "eval('1')",
        "Symbol('x; import os')",
        "Pow(Integer(10), Integer(10000000000))",
        "Integer(10) ** 100000",
        "(lambda: 1)()",
        "[s0][0]",
    ],
)
def test_symbolic_expressions_must_be_plain_arithmetic(expr: str) -> None:
    doc = {
        "graph_module": {"graph": {"sym_int_values": {"s": {"as_expr": {"expr_str": expr}}}}},
        "guards_code": [],
    }
    with pytest.raises(archive.ArtifactRejected) as err:
        program.sanitize_program_json(json.dumps(doc).encode())
    assert err.value.check == "program_json"


@pytest.mark.parametrize(
    "expr",
    [
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(8), Symbol('s0'))",
        "Pow(s0, Integer(-1))",
        "Max(1, s0)",
    ],
)
def test_the_expressions_torch_writes_are_accepted(expr: str) -> None:
    doc = {"graph_module": {"graph": {"sym_int_values": {"s": {"as_expr": {"expr_str": expr}}}}}}
    program.sanitize_program_json(json.dumps(doc).encode())


def test_a_bit_flipped_member_is_refused(tmp_path: Path, honest_pt2: Path, tiny_data: Path) -> None:
    blob = bytearray(honest_pt2.read_bytes())
    with zipfile.ZipFile(honest_pt2) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/weights/weight_0"))
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    blob[info.header_offset + 30 + name_len + extra_len] ^= (
        0xFF  # first payload byte: the CRC no longer holds
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.pt2").write_bytes(bytes(blob))
    assert run(tmp_path / "a", tiny_data)["check"] == "artifact:member_corrupt"
