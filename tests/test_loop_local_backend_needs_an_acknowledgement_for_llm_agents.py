"""`harness run --backend local` refuses to run an LLM agent's train.py unless the loudly named flag
`--i-understand-local-runs-agent-code-unsandboxed` is on the command line: without it the run stops
before anything starts (no agent, no sandbox, no run folder) with an error that says why and what to
do, and the distinct exit code 10.

Defeats an easy mistake with a large blast radius: the local backend runs train.py as a host process
with no isolation, so a model-written candidate would run as the user, with their files, network and
credentials, behind nothing but a warning that scrolls past. The scripted agents (offline, replay),
whose code is this repository's or a folder the user chose, need no flag; the Docker backend needs
none either. The sandbox and the agent are fakes: what is tested is the gate in front of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import harness.agents
import harness.loop_cmds as loop_cmds
from harness.agents.base import Proposal
from harness.cli import main
from harness.records.chain import Ledger
from sandbox.constants import ExitCode
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import PROGRAM, START, FakeSandbox, with_score

FLAG = "--i-understand-local-runs-agent-code-unsandboxed"


class Started:
    """Records whether the run got as far as building its agent and its sandbox."""

    def __init__(self) -> None:
        self.agents: list[str] = []
        self.sandboxes: list[str] = []


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Started:
    monkeypatch.chdir(tmp_path)
    for name in (
        "AUTORESEARCH_PROFILE",
        "AUTORESEARCH_AGENT",
        "AUTORESEARCH_MAX_TRIALS",
        "AUTORESEARCH_BACKEND",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "01.py").write_text("# description: lower\n" + with_score(START, 0.9), encoding="utf-8")
    seen = Started()

    def make_agent(name: str, settings: Any = None) -> ScriptedAgent:
        seen.agents.append(name)
        return ScriptedAgent(
            [lambda ctx: Proposal(train_py=with_score(ctx.train_py, 0.9), description="lower")]
        )

    real_make_agent = harness.agents.make_agent

    def agent_for(name: str, settings: Any = None) -> Any:
        return (
            real_make_agent(name, settings) if name in ("offline", "replay") else make_agent(name, settings)
        )

    def make_sandbox(backend: str, data_dir: Path | None) -> FakeSandbox:
        seen.sandboxes.append(backend)
        return FakeSandbox()

    monkeypatch.setattr(harness.agents, "make_agent", agent_for)  # cmd_run imports it at call time
    monkeypatch.setattr(loop_cmds, "_make_sandbox", make_sandbox)
    monkeypatch.setattr(loop_cmds, "_ensure_data", lambda profile, data_dir: None)
    return seen


def run(*extra: str) -> int:
    return main(["run", "--profile", "tiny", "--max-trials", "1", *extra])


def test_the_flag_has_the_loud_name_and_code_the_docs_promise() -> None:
    assert loop_cmds.LOCAL_ACK_FLAG == FLAG
    others = {c.value for c in ExitCode if c is not ExitCode.LOCAL_NOT_ACKNOWLEDGED}
    assert ExitCode.LOCAL_NOT_ACKNOWLEDGED == 10 and 10 not in others  # distinct from every other outcome


@pytest.mark.parametrize(
    ("agent", "env"),
    [("claude", {}), ("auto", {"ANTHROPIC_API_KEY": "sk-test"})],
    ids=["claude", "auto-resolving-to-claude"],
)
def test_an_llm_agent_on_the_local_backend_is_refused_without_the_flag(
    started: Started,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    agent: str,
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run("--agent", agent, "--backend", "local") == ExitCode.LOCAL_NOT_ACKNOWLEDGED == 10
    err = capsys.readouterr().err
    assert "refusing to run the claude agent's train.py with the local backend" in err
    assert "NOTHING isolates it" in err and "--backend docker" in err and FLAG in err
    assert started.agents == [] and started.sandboxes == []  # stopped before anything started
    assert not (tmp_path / "runs").exists()


def test_the_setting_in_a_file_is_not_an_acknowledgement(
    started: Started, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backend = "local" in autoresearch.toml goes through the same gate: only the flag opens it."""
    (tmp_path / "autoresearch.toml").write_text('agent = "claude"\nbackend = "local"\n', encoding="utf-8")
    assert run() == 10
    assert FLAG in capsys.readouterr().err
    assert started.sandboxes == []


def test_with_the_flag_the_llm_run_goes_ahead_and_says_so(
    started: Started, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--agent", "claude", "--backend", "local", FLAG) == 0
    err = capsys.readouterr().err
    assert "LOCAL BACKEND, NO ISOLATION" in err and f"Acknowledged with {FLAG} for the claude agent" in err
    assert started.agents == ["claude"] and started.sandboxes == ["local"]
    records = Ledger(tmp_path / "runs/tiny-claude/ledger.jsonl").records()
    assert [r.kind for r in records][-1] == "candidate"


@pytest.mark.parametrize(
    "argv",
    [
        ("--agent", "replay", "--replay-dir", "replay", "--backend", "local"),
        ("--agent", "claude", "--backend", "docker", "--canary-interval", "0"),  # the fake rejects no canary
    ],
    ids=["scripted-agent-local", "llm-agent-docker"],
)
def test_scripted_agents_and_the_docker_backend_need_no_flag(
    started: Started, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    assert run(*argv) == 0
    err = capsys.readouterr().err
    assert "refusing" not in err and "Acknowledged" not in err
    assert len(started.sandboxes) == 1
