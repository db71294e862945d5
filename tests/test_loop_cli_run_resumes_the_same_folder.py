"""`python -m harness run` says what it chose and why, records into runs/<profile>-<agent> by
default, writes the report when it stops, and running the same command again resumes the same run
folder (trial ids continue; nothing is re-run or lost).

The sandbox is the fake one (the real backends are exercised by their own tests and by the slow
end-to-end test); the agent is the real ReplayAgent reading a folder of train.py files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.loop_cmds as loop_cmds
from harness.cli import main
from harness.records.chain import Ledger, verify
from tests.test_loop_fakes_honour_the_protocols import PROGRAM, START, FakeSandbox, with_score


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in (
        "AUTORESEARCH_PROFILE",
        "AUTORESEARCH_AGENT",
        "AUTORESEARCH_MAX_TRIALS",
        "ANTHROPIC_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "01.py").write_text(
        "# description: lower the score\n" + with_score(START, 0.9), encoding="utf-8"
    )
    (replay / "02.py").write_text("# description: broken\ndef (\n", encoding="utf-8")
    (replay / "03.py").write_text("# description: worse\n" + with_score(START, 2.0), encoding="utf-8")
    sandbox = FakeSandbox()
    monkeypatch.setattr(loop_cmds, "_make_sandbox", lambda backend, data_dir: sandbox)
    return tmp_path


def run(*extra: str) -> int:
    return main(
        [
            "run",
            "--profile",
            "tiny",
            "--agent",
            "replay",
            "--replay-dir",
            "replay",
            "--backend",
            "local",
            *extra,
        ]
    )


def test_run_defaults_to_runs_profile_agent_and_resumes(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--max-trials", "2") == 0
    err = capsys.readouterr().err
    assert "profile tiny: set in the configuration" in err
    assert "agent replay: set in the configuration" in err
    assert "run folder runs/tiny-replay (default: runs/<profile>-<agent>)" in err
    assert "stopped: max_trials reached: 2 candidate trials of 2" in err
    run_dir = workdir / "runs" / "tiny-replay"
    first = [r.trial_id for r in Ledger(run_dir / "ledger.jsonl").records()]
    assert first == ["t0000", "t0001", "t0002", "t0003", "t0004"]  # 3 baseline runs, 2 candidates
    assert (run_dir / "report.md").is_file() and (run_dir / "progress.png").is_file()

    # The same command with a higher limit resumes: the replay agent goes on with the one file it had
    # not played (the run holds two candidates), then has nothing left; ids continue and the
    # recorded history is untouched.
    assert run("--max-trials", "5") == 0
    err = capsys.readouterr().err
    assert "(resuming)" in err
    records = Ledger(run_dir / "ledger.jsonl").records()
    assert [r.trial_id for r in records] == [f"t{i:04d}" for i in range(6)]
    assert [r.trial_id for r in records[:5]] == first
    assert records[5].description == "worse"  # the third file, not the first one again
    assert verify(run_dir).ok
    assert "the agent has nothing left to propose" in err

    assert main(["status"]) == 0  # the only run folder under runs/
    assert "t0005" in capsys.readouterr().out


def test_run_with_max_trials_already_reached_does_nothing_more(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--max-trials", "1") == 0
    assert run("--max-trials", "1") == 0
    assert "max_trials reached: 1 candidate trials of 1" in capsys.readouterr().err
    assert len(Ledger(workdir / "runs/tiny-replay/ledger.jsonl").records()) == 4


def test_a_replay_folder_that_does_not_exist_is_a_config_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["run", "--profile", "tiny", "--agent", "replay", "--replay-dir", "nowhere", "--backend", "local"]
        )
        == 2
    )
    assert "replay folder nowhere does not exist" in capsys.readouterr().err
