"""The one interface the controller uses to run a trial, whatever isolates it.

`DockerSandbox` (sandbox/engine/docker.py) is the real one. `LocalSandbox` (sandbox/engine/local.py)
runs the same two steps as host processes with the same clock and the same classification, so the
controller's tests need no engine. It isolates NOTHING and must never run untrusted code.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from sandbox.verdict import TrialSpec, Verdict


@runtime_checkable
class Sandbox(Protocol):
    """Runs one candidate through TRAIN then EVAL and returns the verdict.

    A verdict about the candidate is a return value (any Status); a failure of the sandbox itself
    raises `sandbox.verdict.SandboxError`. Setting `cancel` stops the trial (containers or processes
    removed) and raises `sandbox.verdict.TrialCancelled`.
    """

    name: str

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict: ...
