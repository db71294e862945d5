"""The Engine seam: the mechanism a backend supplies to the one trial template (sandbox/engine/trial.py).

An engine knows how to run TRAIN and EVAL somewhere (containers, host processes) and how to remove
what it made; it decides nothing. The template owns everything engines have in common: the trial
folder, the audit trail, the classification of outcomes and the verdict. So two engines given the
same outcome cannot disagree on the status, the events or the files.

Deliberate properties:
- One `EngineTrial` per trial, opened by the engine with the staged candidate: it holds what the
  engine created, so `cleanup` can remove it whatever step failed, and `train` may prepare `evaluate`
  (the Docker engine starts its evaluator while TRAIN runs).
- `train` and `evaluate` return observations (`TrainResult`, `EvalResult`): engine-neutral outcomes
  plus what only the engine timed (signals) or named (containers). A failing candidate is a result;
  a failing engine raises `SandboxError`.
- Cancellation is an event the engines wait on instead of sleeping: when it is set they stop what
  runs and raise `TrialCancelled`; the template's `finally` then cleans up.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sandbox.compute import ComputeReport
from sandbox.engine.audit import Signals
from sandbox.verdict import EvalOutcome, TrainOutcome, TrialCancelled, TrialSpec


@dataclass(frozen=True)
class StagedTrial:
    """What the template prepared before the engine runs anything."""

    spec: TrialSpec
    trial_dir: Path  # resolved
    data_dir: Path  # the profile's prepared data, checked
    candidate: Path  # the copy in the trial folder: what runs
    started: float  # time.monotonic() when the trial began


@dataclass(frozen=True)
class TrainResult:
    """What the engine observed of TRAIN."""

    outcome: TrainOutcome
    log: bytes  # the candidate's capped log: untrusted, read only for the claimed score
    signals: Signals = field(default_factory=dict)  # when the controller sent SIGTERM / SIGKILL
    name: str | None = None  # the engine's name for TRAIN (a container), for the audit
    peak_memory_bytes: int | None = None
    compute: ComputeReport | None = None  # what TRAIN got of its CPUs (sandbox/compute.py)


@dataclass(frozen=True)
class EvalResult:
    """What the engine observed of EVAL, the evaluator's report included."""

    outcome: EvalOutcome
    signals: Signals = field(default_factory=dict)
    name: str | None = None


class EngineTrial(Protocol):
    """One trial on an engine. `timings` and `logs` are filled as the steps run."""

    timings: dict[str, float]
    logs: dict[str, Path]

    def train(self, cancel: threading.Event) -> TrainResult: ...

    def evaluate(self, cancel: threading.Event) -> EvalResult: ...

    def cleanup(self) -> None:
        """Remove everything the trial created; never raises (what fails is logged and reaped later)."""


class Engine(Protocol):
    """A backend's mechanism: where TRAIN and EVAL run."""

    name: str
    data_dir: Path | None  # None: the profile's default folder

    @property
    def images(self) -> Mapping[str, str]:
        """Role to image digest, recorded in the audit trail and the verdict ({} without images)."""
        ...

    def open(self, staged: StagedTrial) -> EngineTrial: ...


def raise_if_cancelled(cancel: threading.Event, step: str) -> None:
    if cancel.is_set():
        raise TrialCancelled(f"cancelled during {step}: stopped and cleaned up, nothing decided")
