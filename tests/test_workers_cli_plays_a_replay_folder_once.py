"""`python -m harness run --workers 2` (the flag, or `workers = 2` in autoresearch.toml) runs two
leased workers on one run folder, and a replay folder is played once over both: each file exactly
once, none skipped, none twice.

Two defences make it so, and removing both plays files twice: the CLI shares the one replay agent
between the workers (the offline and Claude agents get one per worker), and every candidate in
flight gets its own `trial_index` (so even a per-worker replay agent, which resumes from the index,
would pick distinct files). Removing only the index still passes, because the shared agent serialises.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.loop_cmds as loop_cmds
from harness.cli import main
from harness.records.chain import Ledger, verify
from sandbox.engine.gpu import CpuSetLeases
from tests.test_loop_fakes_honour_the_protocols import PROGRAM, START, with_score
from tests.workers_fakes import RecordingSandbox


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, RecordingSandbox]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the lease table lives under ~/.cache
    for name in ("AUTORESEARCH_PROFILE", "AUTORESEARCH_AGENT", "AUTORESEARCH_WORKERS", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    replay = tmp_path / "replay"
    replay.mkdir()
    for i, score in enumerate((0.9, 1.5, 0.95, 2.0, 0.8), start=1):
        text = f"# description: file {i}\n" + with_score(START, score)
        (replay / f"{i:02d}.py").write_text(text, encoding="utf-8")
    sandbox = RecordingSandbox()
    monkeypatch.setattr(loop_cmds, "_make_sandbox", lambda backend, data_dir: sandbox)
    monkeypatch.setattr(loop_cmds, "_ensure_data", lambda profile, data_dir: None)
    return tmp_path, sandbox


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_two_workers_share_the_replay_folder(workdir: tuple[Path, RecordingSandbox], how: str) -> None:
    folder, sandbox = workdir
    # Two one-CPU sets whatever the host has (the fake sandbox pins nothing).
    settings = '[limits]\ncpuset_cpus = "0-1"\n'
    flags = ["--workers", "2"]
    if how == "toml":
        settings, flags = "workers = 2\n" + settings, []
    (folder / "autoresearch.toml").write_text(settings, encoding="utf-8")
    argv = ["run", "--profile", "tiny", "--agent", "replay", "--replay-dir", "replay", "--backend", "local"]
    assert main([*argv, *flags]) == 0

    run_dir = folder / "runs" / "tiny-replay"
    assert verify(run_dir / "ledger.jsonl").ok
    candidates = [r for r in Ledger(run_dir / "ledger.jsonl").records() if r.kind == "candidate"]
    assert sorted(r.description for r in candidates) == [f"file {i}" for i in range(1, 6)]
    assert {r.limits["cpuset_cpus"] for r in candidates} <= {"0", "1"}
    assert {r.worker.rsplit("/", 1)[1] for r in candidates} <= {"w0", "w1"}
    assert sandbox.clashes == []
    table = folder / "home" / ".cache" / "autoresearch" / "leases.json"
    assert CpuSetLeases(table, 2, cpus=[0, 1]).holders() == {}
