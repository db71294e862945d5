"""`python -m harness trial` exits 0 for any verdict and non-zero only when the infrastructure failed.

Property: whatever the candidate does, the command prints the verdict as JSON on its last line and
exits 0; a missing engine, image or data set is not blamed on the candidate: it exits with its own
code (3 engine, 4 image, 5 data) and a message naming the make target that fixes it.
Attack defeated: a loop that treats a broken engine as a crashed candidate would discard good ideas
(or, retrying, give a candidate a second budget); one that treats a crash as an engine error would
retry a candidate for ever. Here the two can never be confused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import constants as C

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ROOT / "tests" / "candidates"


def _trial(
    *args: str, trial_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; every call names its trial folder so nothing lands in the repository's runs/."""
    return subprocess.run(
        [sys.executable, "-m", "harness", "trial", *args, "--trial-dir", str(trial_dir)],
        cwd=ROOT,
        env=(env or dict(os.environ)) | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def fake_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (root / name).mkdir(parents=True)
        (root / name / "placeholder").write_text(name)
    return root


def test_a_verdict_exits_zero_with_json_last(fake_data: Path, tmp_path: Path) -> None:
    trial_dir = tmp_path / "cli-forged"
    result = _trial(
        str(CANDIDATES / "forged_score.py"),
        "--backend", "local", "--data-dir", str(fake_data), "--time-budget", "5", "--json",
        trial_dir=trial_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout.strip().splitlines()[-1])
    assert verdict["status"] == "crash"
    assert verdict["val_bpb"] is None and verdict["claimed_val_bpb"] == pytest.approx(0.0001)
    assert verdict["trial_id"] == "cli-forged"
    assert verdict["limits"]["time_budget_s"] == 5
    assert Path(verdict["logs"]["train"]).is_file()
    assert json.loads((trial_dir / C.VERDICT_FILE).read_text())["status"] == "crash"


def test_missing_data_says_make_data(tmp_path: Path) -> None:
    result = _trial(
        str(CANDIDATES / "forged_score.py"),
        "--backend",
        "local",
        "--data-dir",
        str(tmp_path / "none"),
        "--json",
        trial_dir=tmp_path / "t",
    )
    assert result.returncode == 5
    assert "make data" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["error"] == "DataMissing"


def test_unreachable_engine_says_make_engine(fake_data: Path, tmp_path: Path) -> None:
    env = dict(os.environ) | {"DOCKER_HOST": f"unix://{tmp_path}/no-such-engine.sock"}
    result = _trial(
        str(CANDIDATES / "forged_score.py"), "--data-dir", str(fake_data), env=env, trial_dir=tmp_path / "t"
    )
    assert result.returncode == 3
    assert "make engine" in result.stderr


@pytest.mark.docker
def test_missing_image_says_make_images(docker_client: object, fake_data: Path, tmp_path: Path) -> None:
    result = _trial(
        str(CANDIDATES / "forged_score.py"),
        "--data-dir",
        str(fake_data),
        "--image",
        "autoresearch-no-such:image",
        trial_dir=tmp_path / "t",
    )
    assert result.returncode == 4
    assert "make images" in result.stderr


@pytest.mark.docker
def test_a_docker_verdict_exits_zero(trainer_image: str, fake_data: Path, tmp_path: Path) -> None:
    result = _trial(
        str(CANDIDATES / "crash.py"),
        "--data-dir",
        str(fake_data),
        "--json",
        trial_dir=tmp_path / "t",
    )
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout.strip().splitlines()[-1])
    assert verdict["status"] == "crash" and verdict["backend"] == "docker"
    assert verdict["images"]["trainer"] == trainer_image
    assert "candidate bug" in Path(verdict["logs"]["train"]).read_text()


def test_the_cli_parser_declares_preflight_flags_once_without_docker_py() -> None:
    """`preflight`'s flags come from sandbox.preflight.cli (one declaration); building the parser, as
    --help does, loads neither docker-py nor preflight's engine side."""
    code = (
        "import sys\n"
        "from harness.cli import build_parser\n"
        "args = build_parser().parse_args(['preflight', '--runtime', 'runsc', '--json'])\n"
        "print(args.runtime, args.json, args.profile, 'docker' in sys.modules, "
        "'sandbox.preflight.runner' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["runsc", "True", "tiny", "False", "False"]
