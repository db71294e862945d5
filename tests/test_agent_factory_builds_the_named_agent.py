"""`make_agent(name, settings)` builds the agent the config names, and bad settings fail at once.

The loop builds its agent from configuration before the first trial; a typo or a missing folder must
stop the run there with a clear error, not hours later. Also: settings are frozen and reject unknown
fields, a dated model snapshot is priced as its alias but no looser prefix match happens (Opus 4 and
Opus 4.5 differ threefold), and an offline run never imports the anthropic SDK.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.agents import Agent, AgentFatal, AgentSettings, ModelPrice, make_agent
from harness.agents.offline import OfflineAgent
from harness.agents.replay import ReplayAgent

ROOT = Path(__file__).resolve().parents[1]


def test_each_name_builds_its_agent_and_the_name_wins_over_the_configured_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    (tmp_path / "a.py").write_text("A = 1\n")
    settings = AgentSettings(kind="offline", replay_dir=tmp_path)

    offline, replay, claude = (make_agent(name, settings) for name in ("offline", " Replay ", "claude"))

    assert isinstance(offline, OfflineAgent) and isinstance(replay, ReplayAgent)
    assert type(claude).__name__ == "ClaudeAgent"
    for agent in (offline, replay, claude):
        assert isinstance(agent, Agent)
    assert {offline.name, replay.name, claude.name} == {"offline", "replay", "claude"}


def test_an_unknown_name_is_a_value_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="offline") as caught:
        make_agent("gpt", AgentSettings())
    assert "gpt" in str(caught.value)


def test_replay_without_a_folder_is_refused() -> None:
    with pytest.raises(ValidationError, match="replay_dir"):
        AgentSettings(kind="replay")
    with pytest.raises(AgentFatal, match="replay_dir"):
        make_agent("replay", AgentSettings())


def test_settings_are_frozen_and_reject_unknown_fields() -> None:
    settings = AgentSettings()
    with pytest.raises(ValidationError):
        settings.model = "other"
    with pytest.raises(ValidationError, match="api_key"):
        AgentSettings(api_key="sk-ant-leak")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AgentSettings(max_edit_turns=0)


def test_prices_match_exact_ids_and_dated_snapshots_only() -> None:
    alias = ModelPrice(input=5, output=25, cache_write=6.25, cache_read=0.5)
    older = ModelPrice(input=15, output=75, cache_write=18.75, cache_read=1.5)
    settings = AgentSettings(prices={"claude-opus-4-5": alias, "claude-opus-4": older})

    assert settings.price_for("claude-opus-4-5") == alias
    assert settings.price_for("claude-opus-4-5-20251101") == alias
    assert settings.price_for("claude-opus-4-20250514") == older
    assert settings.price_for("claude-opus-4-9") is None
    assert AgentSettings().price_for(AgentSettings().model) is not None  # the default model is priced


def test_an_offline_run_never_imports_the_anthropic_sdk() -> None:
    code = (
        "import sys\n"
        "from harness.agents import AgentContext, make_agent\n"
        "agent = make_agent('offline')\n"
        "agent.propose(AgentContext(program='', train_py='LR = 0.1  # lr\\n'))\n"
        "print('anthropic' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_configured_prices_add_to_the_built_in_table() -> None:
    custom = ModelPrice(input=1, output=2, cache_write=3, cache_read=4)
    settings = AgentSettings.model_validate({"prices": {"claude-custom": custom.model_dump()}})

    assert settings.price_for("claude-custom") == custom
    default = AgentSettings().price_for(AgentSettings().model)
    assert default is not None and settings.price_for(AgentSettings().model) == default
