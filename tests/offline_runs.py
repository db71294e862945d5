"""A simulated run of the offline agent, shared by the tests that check what it proposes."""

from __future__ import annotations

from harness.agents import AgentContext, AgentSettings, HistoryRow, Proposal
from harness.agents.offline import OfflineAgent


def simulate_run(source: str, profile: str, n: int, seed: int = 0) -> list[tuple[str, Proposal]]:
    """(the source each proposal edited, the proposal) for n trials: every fourth kept, the next starts from it."""
    agent = OfflineAgent(AgentSettings(seed=seed))
    history: list[HistoryRow] = []
    out: list[tuple[str, Proposal]] = []
    for i in range(n):
        ctx = AgentContext(
            program="", train_py=source, trial_index=i, history=tuple(history), profile=profile
        )
        proposal = agent.propose(ctx)
        out.append((source, proposal))
        decision = "keep" if i % 4 == 3 else "discard"
        history.append(
            HistoryRow(trial_id=f"t{i:04d}", status="ok", decision=decision, description=proposal.description)
        )
        if decision == "keep":
            source = proposal.train_py
    return out
