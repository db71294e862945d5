"""The morning reading matches the records: `report` writes progress.png and a report.md whose
numbers come from the ledger (and which says so loudly when the ledger does not verify), with the
kept changes' diffs; `status` and `logs` show a run and a trial; the `run` command refuses a broken
configuration or a missing program.md with a message before starting anything.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from harness.agents.base import Proposal
from harness.cli import main
from harness.loop import ResearchLoop
from harness.progress import LogProgress, RichProgress, make_progress
from harness.records.chain import Ledger
from harness.report import load_run, render_markdown, status_text, write_report
from harness.report_plot import plot_progress
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import (
    FakeSandbox,
    Sleeps,
    edit,
    run_config,
    with_outcome,
    with_score,
    without_line,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    config = run_config(tmp, max_trials=5)
    agent = ScriptedAgent(
        [
            edit(lambda t: with_score(t, 0.95), "lower the score"),
            edit(lambda t: with_score(t, 50.0), "a terrible idea"),  # an outlier the plot must survive
            edit(lambda t: with_outcome(t, "oom"), "use all the memory"),
            edit(lambda t: without_line(t, "PAD_1"), "drop PAD_1"),  # a simplification
            Proposal(train_py="def (", description="broken"),
        ]
    )
    sandbox = FakeSandbox(noise=0.002, starve=lambda k: k == 1)  # the host starved the second baseline run
    ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    return config.run_dir


def test_report_writes_a_png_and_markdown_with_the_kept_diffs(run_dir: Path) -> None:
    png, md = write_report(run_dir)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = md.read_text(encoding="utf-8")
    records = Ledger(run_dir / "ledger.jsonl").records()
    kept = [r for r in records if r.decision.value == "keep"]
    assert len(kept) == 2
    assert "## Kept changes" in text and "![progress](progress.png)" in text
    for r in kept:
        assert f"### {r.trial_id}: {r.description}" in text
    assert "+SCORE = 0.950000" in text and "-PAD_1 = 1" in text  # the diffs themselves
    assert "verifies" in text and records[-1].hash is not None and records[-1].hash[:16] in text
    assert "1 oom" in text and "1 crash" in text
    view = load_run(run_dir)
    assert view.state.best is not None and f"best {view.state.best.val_bpb:.6f}" in text


def test_report_shows_the_paired_runs_the_pooled_noise_and_the_starved_runs(run_dir: Path) -> None:
    text = render_markdown(load_run(run_dir))
    records = Ledger(run_dir / "ledger.jsonl").records()
    confirmed = [r for r in records if any(run.role == "best" for run in r.runs)]
    assert confirmed and "## Paired confirmations" in text
    for r in confirmed:
        for run in r.runs:
            if run.pair and run.val_bpb is not None:
                assert f"| {r.trial_id} | {r.decision.value} | {run.pair} | {run.seed} |" in text
                assert f"{run.val_bpb:.6f}" in text
    view = load_run(run_dir)
    assert view.state.noise is not None
    assert f"pooled over {view.state.noise.runs} repeated runs (df {view.state.noise.df})" in text
    assert view.state.noise.runs > view.state.noise.n  # more than the baseline runs
    assert "starved runs (the host took the CPUs; re-run, never judged): 1 in 1 trial(s)" in text


def test_plot_survives_runs_without_any_score(tmp_path: Path, run_dir: Path) -> None:
    view = load_run(run_dir)
    crashes_only = view.__class__(
        paths=view.paths,
        meta=view.meta,
        records=view.records[-2:-1],
        check=view.check,
        states=view.states[:1],
    )
    out = plot_progress(crashes_only, tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_tampered_ledger_is_flagged_in_the_report(tmp_path: Path, run_dir: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ledger.jsonl", "run.json"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    ledger = copy / "ledger.jsonl"
    ledger.write_text(
        ledger.read_text(encoding="utf-8").replace("a terrible idea", "a fine idea"), encoding="utf-8"
    )
    text = render_markdown(load_run(copy), image=None)
    assert "DOES NOT VERIFY: row 3" in text


def test_status_and_logs_commands(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "t0006" in out and "no controller is running" in out and "does not parse" in out
    assert out.strip() == status_text(run_dir).strip()

    assert main(["logs", "t0002", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "keep (ok)" in out and "diff to parent" in out
    assert "run 0: verdict" in out and "confirm: verdict" in out
    assert "TRAIN log (untrusted candidate output)" in out and "val_bpb:" in out
    assert '"time_budget_s": 5.0' in out

    assert main(["logs", "t9999", "--run-dir", str(run_dir)]) == 1
    assert "no trial t9999" in capsys.readouterr().err


def test_run_refuses_a_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('max_trails = 3\nbackend = "podman"\n', encoding="utf-8")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "max_trails: Extra inputs are not permitted" in err and "backend:" in err and "'podman'" in err


def test_run_fails_fast_without_program_md(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            "--profile",
            "tiny",
            "--agent",
            "offline",
            "--backend",
            "local",
            "--program",
            str(tmp_path / "program.md"),
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "profile tiny: set in the configuration" in err
    assert "NO ISOLATION" in err
    assert "program.md not found" in err
    assert not (tmp_path / "run").exists()


def test_the_live_display_renders_every_trial(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = RichProgress(stream)
    config = run_config(tmp_path, max_trials=1)
    agent = ScriptedAgent([edit(lambda t: with_score(t, 0.9), "lower the score")])
    ResearchLoop(config, FakeSandbox(), agent, progress=progress, sleep=Sleeps()).run()
    out = stream.getvalue()
    assert "run test in" in out  # the banner
    for trial_id in ("t0000", "t0001", "t0002"):
        assert trial_id in out
    assert "lower the score" in out and "keep" in out and "best 0.900000" in out
    assert isinstance(make_progress(io.StringIO()), LogProgress)  # not a terminal: plain log lines
