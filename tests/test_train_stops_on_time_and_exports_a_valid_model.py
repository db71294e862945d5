"""The baseline train.py, run as the controller runs it, stops on time, exports a valid model and learns.

Properties, for the tiny profile on the host (no container: this is about train.py, not isolation):
- SIGTERM mid-training makes it stop at the next step, export model.pt2 and exit 0 within the profile's
  kill grace, so the controller's clock never costs an honest candidate its artifact;
- left alone, it stops at its own deadline and exits within the budget plus the grace;
- the output folder then holds model.pt2 and nothing else; the graph maps int64 (B, T) to
  (B, T, VOCAB_SIZE) logits for any B, is causal and keeps rows independent;
- it prints the summary block (`---` then `key: value` lines) and never a val_bpb;
- trained for the full budget, the trusted evaluator accepts it and scores it below the unigram
  baseline: the baseline measurably learns within 30 s on two cores.
No test hook exists in train.py: it is driven only through the environment the controller sets.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import prepare
from sandbox.constants import ARTIFACT_FILE, ENV_DATA, ENV_OUT, ENV_PROFILE, ENV_SEED, Status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / "train.py"
TINY = prepare.PROFILES["tiny"]
SUMMARY_KEYS = {
    "training_seconds",
    "total_seconds",
    "num_steps",
    "num_params_M",
    "peak_memory_mb",
    "final_train_loss",
    "tokens_per_second",
}


@dataclass
class Run:
    returncode: int
    output: str
    out_dir: Path
    wall_s: float
    after_sigterm_s: float | None = None

    @property
    def summary(self) -> dict[str, str]:
        assert "\n---\n" in self.output, f"no summary block in:\n{self.output[-2000:]}"
        block = self.output.rsplit("\n---\n", 1)[1]
        return dict(line.split(":", 1) for line in block.splitlines() if ":" in line)


def run_train(data: Path, tmp_path: Path, *, sigterm_after_first_progress_line: bool) -> Run:
    """Run train.py in a subprocess with the controller's environment; optionally SIGTERM it mid-training."""
    out_dir = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        ENV_PROFILE: "tiny",
        ENV_DATA: str(data),
        ENV_OUT: str(out_dir),
        ENV_SEED: "0",
    }
    lines: list[str] = []
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_PY)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    after_sigterm = None
    try:
        if sigterm_after_first_progress_line:
            # A progress line means the handler is installed and training is under way.
            while not any(line.startswith("step ") for line in lines) and proc.poll() is None:
                assert time.monotonic() - started < TINY.time_budget, "no progress line within the budget"
                time.sleep(0.1)
            assert proc.poll() is None, "train.py finished before it could be interrupted"
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            proc.wait(timeout=TINY.kill_grace)
            after_sigterm = time.monotonic() - sent
        else:
            proc.wait(timeout=TINY.time_budget + TINY.kill_grace)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return Run(proc.returncode, "".join(lines), out_dir, time.monotonic() - started, after_sigterm)


def check_artifact(out_dir: Path) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == [ARTIFACT_FILE]
    model = torch.export.load(out_dir / ARTIFACT_FILE).module()  # our own artifact: trusted here
    x = torch.randint(1, TINY.vocab_size, (3, TINY.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, TINY.max_seq_len, TINY.vocab_size)
        assert logits.is_floating_point() and bool(torch.isfinite(logits).all())
        t = TINY.max_seq_len // 3
        future_changed = x.clone()
        future_changed[:, t + 1 :] = torch.roll(future_changed[:, t + 1 :], 1, dims=0)
        # Tolerances as the evaluator's probes: the same batch shape reproduces bit for bit up to rounding,
        # a row run alone goes through differently shaped kernels.
        causal = model(future_changed)[:, : t + 1]
        torch.testing.assert_close(causal, logits[:, : t + 1], rtol=0, atol=1e-4)
        torch.testing.assert_close(model(x[1:2]), logits[1:2], rtol=0, atol=1e-3)


def test_sigterm_stops_training_and_exports_within_the_grace(tiny_data: Path, tmp_path: Path) -> None:
    run = run_train(tiny_data, tmp_path, sigterm_after_first_progress_line=True)

    assert run.returncode == 0, run.output[-3000:]
    assert run.after_sigterm_s is not None and run.after_sigterm_s < TINY.kill_grace
    summary = run.summary
    assert summary["stop_reason"].strip() == "sigterm"
    assert SUMMARY_KEYS <= summary.keys()
    assert int(summary["num_steps"]) >= 1
    assert not [line for line in run.output.splitlines() if "val_bpb" in line]
    check_artifact(run.out_dir)


def test_full_budget_run_learns_and_the_evaluator_accepts_it(tiny_data: Path, tmp_path: Path) -> None:
    run = run_train(tiny_data, tmp_path, sigterm_after_first_progress_line=False)

    assert run.returncode == 0, run.output[-3000:]
    assert run.wall_s < TINY.time_budget + TINY.kill_grace
    summary = run.summary
    assert summary["stop_reason"].strip() == "deadline"
    assert SUMMARY_KEYS <= summary.keys()
    assert float(summary["final_train_loss"]) < math.log(TINY.vocab_size) - 1.0  # well below uniform
    check_artifact(run.out_dir)

    report_path = tmp_path / "report.json"
    evaluator = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox.incontainer.evaluate",
            "--profile",
            "tiny",
            "--artifact",
            str(run.out_dir),
            "--report",
            str(report_path),
            "--data",
            str(tiny_data),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluator.returncode == 0, evaluator.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["status"] == Status.OK, report["reason"]
    assert report["val_bpb"] < prepare.unigram_bpb(tiny_data)
