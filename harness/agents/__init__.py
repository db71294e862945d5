"""The agents that propose a new train.py each trial, and `make_agent`, which builds one by name.

`make_agent("offline" | "claude" | "replay", settings)`. The name wins over `settings.kind`, so a CLI flag
can pick the agent while the config supplies its settings: `make_agent(args.agent or cfg.agent.kind,
cfg.agent)`. The Claude agent (and the anthropic SDK) is imported only when asked for, so offline runs
never import it.
"""

from __future__ import annotations

from harness.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentExhausted,
    AgentFatal,
    HistoryRow,
    LastTrial,
    Proposal,
    Usage,
    fence_untrusted,
)
from harness.agents.config import AGENT_KINDS, AgentSettings, ModelPrice

__all__ = [
    "AGENT_KINDS",
    "Agent",
    "AgentContext",
    "AgentError",
    "AgentExhausted",
    "AgentFatal",
    "AgentSettings",
    "HistoryRow",
    "LastTrial",
    "ModelPrice",
    "Proposal",
    "Usage",
    "fence_untrusted",
    "make_agent",
]


def make_agent(name: str, settings: AgentSettings | None = None) -> Agent:
    """The agent called `name`, configured by `settings` (defaults if None).

    Raises ValueError for an unknown name, AgentFatal when the agent can never work as configured
    (no API key, replay folder missing).
    """
    settings = settings or AgentSettings()
    kind = name.strip().lower()
    if kind == "offline":
        from harness.agents.offline import OfflineAgent

        return OfflineAgent(settings)
    if kind == "claude":
        from harness.agents.claude import ClaudeAgent

        return ClaudeAgent(settings)
    if kind == "replay":
        from harness.agents.replay import ReplayAgent

        if settings.replay_dir is None:
            raise AgentFatal("the replay agent needs agent.replay_dir (a folder of train.py files)")
        return ReplayAgent(settings.replay_dir)
    raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_KINDS)}")
