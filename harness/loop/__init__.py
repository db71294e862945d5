"""The research loop: baseline, then propose, run, judge and record, until told to stop.

One `ResearchLoop.run()` is one controller session on one run folder (session.py). The package is cut
by responsibility: `scheduler` (pure: what runs next, or why the run stops), `runner` (one trial for
the seat it is given), `planning` and `evolution` (a trial's plan, the agent as a researcher,
program.md), `recording` (the final judgement and the records), `startup` (resume and repair),
`pool` (the workers, leases, cancellation), `context` (what the workers share).
"""

from harness.loop.common import (
    CONFIRM_SUFFIX,
    derive_seed,
    read_program,
    read_tail,
    unified_diff,
    validate_proposal,
)
from harness.loop.errors import (
    AgentGaveUp,
    BaselineFailed,
    Cancelled,
    CapReached,
    HostStarved,
    InvalidStreak,
    IsolationBroken,
    LoopError,
    ProgramMissing,
    RunLocked,
    RunMismatch,
    SandboxGaveUp,
    StopRun,
)
from harness.loop.outcomes import Outcome, RunRole, RunSummary, Seat
from harness.loop.session import ResearchLoop

__all__ = [
    "CONFIRM_SUFFIX",
    "AgentGaveUp",
    "BaselineFailed",
    "Cancelled",
    "CapReached",
    "HostStarved",
    "InvalidStreak",
    "IsolationBroken",
    "LoopError",
    "Outcome",
    "ProgramMissing",
    "ResearchLoop",
    "RunLocked",
    "RunMismatch",
    "RunRole",
    "RunSummary",
    "SandboxGaveUp",
    "Seat",
    "StopRun",
    "derive_seed",
    "read_program",
    "read_tail",
    "unified_diff",
    "validate_proposal",
]
