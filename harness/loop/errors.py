"""Why a run stops: the errors a session raises (each message says what to do next), and the two
clean ends that are not errors (`StopRun`: the plan is done; `Cancelled`: Ctrl-C or SIGTERM)."""

from __future__ import annotations


class LoopError(Exception):
    """The run cannot go on; the message says why and what to do."""


class ProgramMissing(LoopError):
    pass


class RunLocked(LoopError):
    pass


class RunMismatch(LoopError):
    pass


class BaselineFailed(LoopError):
    pass


class SandboxGaveUp(LoopError):
    pass


class AgentGaveUp(LoopError):
    pass


class InvalidStreak(LoopError):
    pass


class CapReached(LoopError):
    """A cost or token cap was reached: the run stops cleanly; `cap` names the setting."""

    def __init__(self, message: str, *, cap: str) -> None:
        super().__init__(message)
        self.cap = cap


class HostStarved(LoopError):
    """Runs kept coming back `starved`: the host is too busy to measure anything; the run pauses."""


class IsolationBroken(LoopError):
    """The run canary (a known cheat, harness/canary.py) was not rejected: isolation or evaluator broken."""


class StopRun(Exception):
    """Ends a worker cleanly: max_trials reached, or the agent has nothing left to propose."""


class Cancelled(Exception):
    """The run's cancel event was set (Ctrl-C, SIGTERM): the worker stops; its trial has no ledger row."""
