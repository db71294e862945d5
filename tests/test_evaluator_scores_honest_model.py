"""An honest causal model is accepted and scored exactly as the frozen metric scores it.

Property: the evaluator's val_bpb for an exported honest model equals ``prepare.evaluate_bpb`` run on
the same weights eagerly (the graph, the probes and the loader change nothing), the report carries
what an auditor needs (hashes, timings, the probe plan), the CLI exits 0 whenever it wrote a report
and 2 without writing one when it cannot run, and reports are replaced atomically.
Failure it guards against: a hardened evaluator that rejects honest work, or scores it differently
from the metric's definition.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prepare
from sandbox.incontainer.constants import EVALUATOR_MODULE
from sandbox.incontainer.evaluate import EVALUATOR_ERROR_EXIT, evaluate, write_report
from tests.evil_models import FAST_PROFILE, Honest, exported

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def honest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("honest", tmp_path_factory.getbasetemp())


def test_honest_model_is_scored_like_the_metric_scores_it_eagerly(honest_dir: Path, tiny_data: Path) -> None:
    report = evaluate(FAST_PROFILE, honest_dir, tiny_data)
    assert report["status"] == "ok" and report["check"] is None, report["reason"]
    assert all(p["passed"] for p in report["probes"].values())

    rows = prepare.eval_rows(tiny_data, n_tokens=FAST_PROFILE.eval_tokens, seq_len=FAST_PROFILE.max_seq_len)
    eager = prepare.evaluate_bpb(
        Honest().eval(), rows, prepare.load_token_bytes(tiny_data), FAST_PROFILE.eval_batch_size
    )
    assert math.isfinite(report["val_bpb"]) and report["val_bpb"] > 0
    assert report["val_bpb"] == pytest.approx(eager.val_bpb, rel=1e-6)
    assert report["tokens_scored"] == eager.tokens_scored and report["bytes_scored"] == eager.total_bytes
    assert report["unigram_bpb"] == pytest.approx(prepare.unigram_bpb(tiny_data))


def test_report_records_what_an_auditor_needs(honest_dir: Path, tiny_data: Path) -> None:
    report = evaluate(FAST_PROFILE, honest_dir, tiny_data)
    digest = hashlib.sha256((honest_dir / "model.pt2").read_bytes()).hexdigest()
    assert report["artifact_sha256"] == digest
    assert report["param_count"] == sum(p.numel() for p in Honest().parameters())
    assert {"validate", "load", "probes", "score", "total"} <= set(report["timings"])
    assert report["hashes"]["prepare.py"] == hashlib.sha256(Path(prepare.__file__).read_bytes()).hexdigest()
    assert report["hashes"]["data"] == hashlib.sha256((tiny_data / "manifest.json").read_bytes()).hexdigest()
    assert len(report["hashes"]["evaluator"]) == 64
    assert report["torch_version"] == torch.__version__ and report["device"] == "cpu"
    plan = report["probe_plan"]
    assert plan["batch_size"] == FAST_PROFILE.eval_batch_size
    assert [p["name"] for p in plan["passes"]] == ["causality", "rows"]
    assert all(len(p["cuts"]) == plan["n_rows"] == report["eval_rows"] for p in plan["passes"])
    json.dumps(report, allow_nan=False)  # the report is strict JSON


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", EVALUATOR_MODULE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_writes_a_rejection_report_and_exits_zero(
    tmp_path: Path, honest_dir: Path, tiny_data: Path
) -> None:
    art = tmp_path / "out"
    shutil.copytree(honest_dir, art)
    (art / "notes.txt").write_text("smuggled")
    proc = _cli(
        "--profile",
        "tiny",
        "--artifact",
        str(art),
        "--report",
        str(tmp_path / "report.json"),
        "--data",
        str(tiny_data),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "rejected" and report["check"] == "artifact:extra_files"
    assert "Traceback" not in proc.stderr


def test_cli_exits_2_and_writes_nothing_when_it_has_no_data(tmp_path: Path, honest_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _cli(
        "--profile",
        "tiny",
        "--artifact",
        str(honest_dir),
        "--report",
        str(tmp_path / "report.json"),
        "--data",
        str(tmp_path / "empty"),
    )
    assert proc.returncode == EVALUATOR_ERROR_EXIT
    assert "evaluator error" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_cli_scores_an_honest_model_on_the_full_tiny_profile(
    tmp_path: Path, honest_dir: Path, tiny_data: Path
) -> None:
    proc = _cli(
        "--profile",
        "tiny",
        "--artifact",
        str(honest_dir),
        "--report",
        str(tmp_path / "r.json"),
        "--data",
        str(tiny_data),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "ok" and report["eval_rows"] == prepare.PROFILES["tiny"].eval_tokens // 256


def test_a_failed_report_write_leaves_the_previous_report_intact(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_report(path, {"status": "ok", "val_bpb": 1.5})
    with pytest.raises(ValueError):
        write_report(path, {"status": "ok", "val_bpb": float("nan")})  # not strict JSON: refused
    assert json.loads(path.read_text()) == {"status": "ok", "val_bpb": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
