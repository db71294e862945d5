"""Cost caps stop the run cleanly, at the right trial, saying which cap; a resume with a higher cap
continues; whatever a stopped proposal cost is still in the ledger, which keeps verifying; `status`
and report.md show the cost so far.

Driven through the REAL anthropic SDK against the local fake Messages API server: every API call is
priced from the test's price table, so one proposal (two calls) costs exactly PROPOSAL_COST.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.loop_cmds as loop_cmds
from harness.cli import main
from harness.loop import CapReached
from harness.records.chain import Ledger, verify
from harness.records.schemas import run_cost
from harness.report import load_run, render_markdown, status_text
from sandbox.constants import ExitCode
from tests.agent_fakes import FakeMessagesServer
from tests.claude_loop import (
    CALL_COST,
    MODEL,
    PRICE,
    PROGRAM,
    PROPOSAL_COST,
    USAGE,
    fake_server,
    propose,
    run,
)
from tests.test_loop_fakes_honour_the_protocols import START, FakeSandbox


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMessagesServer]:
    yield from fake_server(monkeypatch)


def queue(server: FakeMessagesServer, first: int, count: int) -> None:
    for i in range(first, first + count):
        propose(server, "PAD_1 = 1", f"PAD_1 = {100 + i}", f"PAD_1 -> {100 + i}")


def candidates(run_dir: Path) -> int:
    return sum(1 for r in Ledger(run_dir / "ledger.jsonl").records() if r.kind == "candidate")


def test_the_run_cap_stops_at_the_right_trial_and_a_higher_cap_continues(
    tmp_path: Path, server: FakeMessagesServer
) -> None:
    """With a cap of 2.5 proposals, proposals start while less than the cap is spent: three run, the
    fourth is never asked for. Raised to 4.5, the run goes on to five, and no trial is lost or repeated."""
    queue(server, 0, 5)
    run_dir = tmp_path / "run"

    with pytest.raises(CapReached) as first:
        run(tmp_path, server, max_trials=20, max_cost_usd=2.5 * PROPOSAL_COST)

    assert first.value.cap == "max_cost_usd" and "max_cost_usd" in str(first.value)
    assert candidates(run_dir) == 3
    assert len(server.message_requests()) == 6, "the fourth proposal was never asked for"
    assert run_cost(Ledger(run_dir / "ledger.jsonl").rows()).cost_usd == pytest.approx(3 * PROPOSAL_COST)
    status = status_text(run_dir)
    assert f"agent cost so far: ${3 * PROPOSAL_COST:.4f}" in status

    with pytest.raises(CapReached):
        run(tmp_path, server, max_trials=20, max_cost_usd=4.5 * PROPOSAL_COST)

    records = Ledger(run_dir / "ledger.jsonl").records()
    assert [r.trial_id for r in records if r.kind == "candidate"] == [f"t{i:04d}" for i in range(2, 7)]
    assert [r.description for r in records if r.kind == "candidate"] == [
        f"PAD_1 -> {100 + i}" for i in range(5)
    ]
    assert len(server.message_requests()) == 10
    assert verify(run_dir).ok
    report = render_markdown(load_run(run_dir), image=None)
    assert f"agent cost so far: ${5 * PROPOSAL_COST:.4f}" in report
    assert "prices as of" in report


@pytest.mark.parametrize(
    ("cap", "value"),
    [
        ("max_cost_usd_per_proposal", 1.5 * CALL_COST),
        ("max_tokens_per_proposal", int(1.5 * (USAGE["input_tokens"] + USAGE["output_tokens"]))),
    ],
)
def test_a_per_proposal_cap_stops_the_run_and_its_cost_stays_recorded(
    tmp_path: Path, server: FakeMessagesServer, cap: str, value: float
) -> None:
    """The proposal's second call goes over the cap: the proposal is abandoned, the run stops naming the
    cap, a `spend` row records both calls, and a resume with the cap raised records the next proposal."""
    queue(server, 0, 2)
    run_dir = tmp_path / "run"

    with pytest.raises(CapReached) as stopped:
        run(tmp_path, server, max_trials=1, agent_settings={cap: value})

    assert stopped.value.cap == cap and cap in str(stopped.value)
    assert candidates(run_dir) == 0
    spends = Ledger(run_dir / "ledger.jsonl").spends()
    assert len(spends) == 1 and spends[0].agent.usage.api_calls == 2
    assert spends[0].agent.usage.cost_usd == pytest.approx(PROPOSAL_COST)
    assert verify(run_dir).ok

    run(tmp_path, server, max_trials=1, agent_settings={cap: value * 10})

    assert candidates(run_dir) == 1
    assert run_cost(Ledger(run_dir / "ledger.jsonl").rows()).cost_usd == pytest.approx(2 * PROPOSAL_COST)
    assert "proposals that produced no trial" in status_text(run_dir)
    assert verify(run_dir).ok


def test_the_cli_exits_9_naming_the_cap_and_status_shows_the_cost(
    tmp_path: Path,
    server: FakeMessagesServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m harness run --max-cost-usd` stops with exit code 9 and says which cap; the same command
    with a higher cap continues the same run folder; `status` shows what the agent cost."""
    monkeypatch.chdir(tmp_path)
    for name in ("AUTORESEARCH_PROFILE", "AUTORESEARCH_AGENT", "AUTORESEARCH_MAX_TRIALS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    (tmp_path / "autoresearch.toml").write_text(
        f'[agent_settings]\nmodel = "{MODEL}"\napi_base_url = "{server.base_url}"\nretry_base_s = 0.01\n'
        f"[agent_settings.prices.{MODEL}]\ninput = {PRICE.input}\noutput = {PRICE.output}\n"
        f"cache_write = {PRICE.cache_write}\ncache_read = {PRICE.cache_read}\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(loop_cmds, "_make_sandbox", lambda backend, data_dir: FakeSandbox())
    monkeypatch.setattr(loop_cmds, "_ensure_data", lambda profile, data_dir: None)
    queue(server, 0, 3)
    args = [
        "run", "--profile", "tiny", "--agent", "claude", "--backend", "local", "--max-trials", "10",
        loop_cmds.LOCAL_ACK_FLAG,  # the sandbox is the fake one; the flag is what a local LLM run needs
    ]  # fmt: skip

    assert main([*args, "--max-cost-usd", str(1.5 * PROPOSAL_COST)]) == ExitCode.CAP == 9
    assert "cap max_cost_usd reached" in capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tiny-claude"
    assert candidates(run_dir) == 2

    assert main([*args, "--max-cost-usd", str(2.5 * PROPOSAL_COST)]) == 9
    assert candidates(run_dir) == 3
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert f"agent cost so far: ${3 * PROPOSAL_COST:.4f}" in capsys.readouterr().out
    assert verify(run_dir).ok
