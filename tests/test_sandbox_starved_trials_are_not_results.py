"""A trial whose TRAIN the host starved of CPU comes back `starved`, with no score and the evidence; the
same trial on a quiet host comes back with its own status and a compute share of at least 0.85.

Accident this defeats: other work on the host (load average 5 on a 2-core machine) slowing a candidate
down, so that it trains fewer steps or runs past its budget, and the loss or the timeout being
recorded as the candidate's. Checked with real processes on the engine-free backend (CPU hogs pinned
to the trial's one CPU) and, marked `docker`, on the real engine (hogs on the container's cpuset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import TrialSpec, Verdict

MakeSpec = Callable[..., TrialSpec]
BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}: pass\n"
# Trains (spins) for 3 s, then writes a file and exits 0: `crash` (no model.pt2) unless starved.
SPINNER = BUSY.format(s=3) + "print('val_bpb: 0.5')\n"


@pytest.fixture
def fake_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (root / name).mkdir(parents=True)
        (root / name / "placeholder").write_text(name)
    return root


@contextmanager
def hogs(cpus: set[int], n: int, seconds: float = 60) -> Iterator[None]:
    """`n` busy processes pinned to `cpus`, killed on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)]) for _ in range(n)]
    try:
        for p in procs:
            os.sched_setaffinity(p.pid, cpus)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process (and so the trial it starts) on `cpus` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def spinner(tmp_path: Path) -> Path:
    path = tmp_path / "spinner.py"
    path.write_text(SPINNER)
    return path


def test_a_trial_sharing_its_cpu_with_two_hogs_is_starved(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path
) -> None:
    cpu = {min(os.sched_getaffinity(0))}
    spec = make_spec(spinner(tmp_path), time_budget_s=20, min_compute_share=0.85)
    with pinned(cpu), hogs(cpu, 2):
        verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    assert verdict.status is Status.STARVED
    assert verdict.val_bpb is None
    assert verdict.compute_share is not None and verdict.compute_share < 0.6
    assert verdict.compute is not None and verdict.compute["wait_s"] > 1.0
    assert verdict.compute["allotment_cpus"] == 1
    assert "starved" in verdict.reason and "not the candidate's result" in verdict.reason
    saved = Verdict.model_validate_json((spec.trial_dir / C.VERDICT_FILE).read_text())
    assert saved.compute_share == verdict.compute_share


def test_the_same_trial_on_its_own_cpu_is_judged_on_its_merits(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path
) -> None:
    spec = make_spec(spinner(tmp_path), time_budget_s=20, min_compute_share=0.85)
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    # The shared 2-core test host may be busy: what must hold is that the verdict is the candidate's
    # own (crash: no model.pt2) whenever the share was at least the minimum.
    assert verdict.compute_share is not None and verdict.compute is not None
    if verdict.compute_share >= 0.85:
        assert verdict.status is Status.CRASH and "no model.pt2" in verdict.reason
    else:
        assert verdict.status is Status.STARVED


# --------------------------------------------------------------------------- the real engine


@pytest.mark.docker
def test_trial_cli_on_the_engine_is_starved_under_hogs_and_ok_when_quiet(
    tiny_data: Path, tmp_path: Path
) -> None:
    """`python -m harness trial train.py --json` on the repository's train.py: with two CPU hogs on each
    of the container's CPUs it comes back `starved` with no val_bpb; alone, `ok` with a share >= 0.85."""
    from tests.conftest import engine_unusable

    root = Path(__file__).resolve().parents[1]
    cpus = os.sched_getaffinity(0)  # the container has no cpuset: it may use every CPU, so hog them all

    def trial(name: str) -> dict[str, object]:
        cmd = [sys.executable, "-m", "harness", "trial", str(root / "train.py"), "--json"]
        cmd += ["--data-dir", str(tiny_data), "--trial-dir", str(tmp_path / name)]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
        if done.returncode in (3, 4):
            engine_unusable(done.stderr.strip().splitlines()[-1])
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    quiet = trial("quiet")
    assert quiet["status"] == "ok", quiet["reason"]
    assert isinstance(quiet["compute_share"], float) and quiet["compute_share"] >= 0.85
    with hogs(cpus, 2 * len(cpus), seconds=600):
        busy = trial("busy")
    assert busy["status"] == "starved", busy["reason"]
    assert busy["val_bpb"] is None
    assert isinstance(busy["compute_share"], float) and busy["compute_share"] < 0.85
    compute = busy["compute"]
    assert isinstance(compute, dict) and compute["how"].startswith("schedstat of the tasks of cgroup")
