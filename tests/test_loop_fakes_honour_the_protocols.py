"""The loop's test doubles honour the Sandbox and Agent protocols, and the fake sandbox's verdicts
follow the real backends' rules (val_bpb only with status ok, verdict.json in the trial folder).

The other loop tests import `FakeSandbox`, `run_config`, `with_score` and friends from here, so a
fake that drifted from the contract would make every loop test meaningless; this file pins it.

The fake sandbox reads the candidate's `SCORE = <float>` and `OUTCOME = "<status>"` lines: the
candidate text alone decides the verdict, plus a deterministic per-seed jitter of `noise`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.agents.base import Agent, AgentContext, Proposal
from harness.config import RetrySettings, RunConfig
from harness.judge import JudgeSettings
from sandbox.compute import ComputeReport
from sandbox.constants import TRAIN_LOG_FILE, VERDICT_FILE, Status
from sandbox.engine import trialdir
from sandbox.engine.backend import Sandbox
from sandbox.engine.limits import Limits
from sandbox.verdict import SandboxError, TrialCancelled, TrialSpec, Verdict, classify_starved
from tests.agent_fakes import ScriptedAgent

START = '''"""A stand-in train.py for the loop's tests: the fake sandbox reads SCORE and OUTCOME."""

SCORE = 1.000000  # the val_bpb the fake sandbox reports
OUTCOME = "ok"  # the status the fake sandbox reports
PAD_1 = 1
PAD_2 = 2
PAD_3 = 3
'''

PROGRAM = "Make val_bpb lower. Edit only train.py.\n"

_SCORE = re.compile(r"^SCORE = ([0-9.]+)", re.MULTILINE)
_OUTCOME = re.compile(r'^OUTCOME = "(\w+)"', re.MULTILINE)
PEAK_BYTES = 123_456_789


def jitter(seed: int) -> float:
    """A deterministic value in [-1, 1) per seed."""
    return ((seed * 2654435761) % 2**32) / 2**31 - 1.0


class FakeSandbox:
    """A Sandbox whose verdict is written in the candidate. Records every spec it was given."""

    name = "fake"

    def __init__(
        self,
        *,
        noise: float = 0.0,
        infra_failures: int = 0,
        on_run: Callable[[TrialSpec], None] | None = None,
        starve: Callable[[int], bool] | None = None,
        drift: Callable[[int], float] | None = None,
    ) -> None:
        self.noise = noise
        self.infra_failures = infra_failures  # the next N calls raise SandboxError
        self.on_run = on_run
        self.starve = starve  # starve(k): the k-th call (from 0) comes back starved
        self.drift = drift  # drift(k): what the host adds to the k-th call's score (it sped up: < 0)
        self.calls: list[TrialSpec] = []
        self.cancel: threading.Event | None = (
            None  # the event the last call was given (on_run may wait on it)
        )

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        self.calls.append(spec)
        self.cancel = cancel
        if self.on_run is not None:
            self.on_run(spec)
        if cancel is not None and cancel.is_set():  # as a real engine: a cancelled trial has no verdict
            raise TrialCancelled(f"{spec.trial_id} cancelled")
        if self.infra_failures > 0:
            self.infra_failures -= 1
            raise SandboxError("the fake engine hiccupped")
        text = spec.candidate.read_text(encoding="utf-8")
        score_match, outcome_match = _SCORE.search(text), _OUTCOME.search(text)
        status = Status(outcome_match.group(1)) if outcome_match else Status.OK
        if self.starve is not None and self.starve(len(self.calls) - 1):
            return self._starved(spec)
        score = float(score_match.group(1)) if score_match else 1.0
        score += self.noise * jitter(spec.seed)
        if self.drift is not None:
            score += self.drift(len(self.calls) - 1)
        spec.trial_dir.mkdir(parents=True, exist_ok=True)
        log = f"step 00001 loss 3.2\nval_bpb: {score / 2:.6f}\n".encode()  # a forged claim, never trusted
        (spec.trial_dir / TRAIN_LOG_FILE).write_bytes(log)
        ok = status is Status.OK
        return trialdir.finish(
            spec,
            backend=self.name,
            status=status,
            val_bpb=score if ok else None,
            reason="scored" if ok else f"the candidate asked for {status.value}",
            train_log=log,
            timings={"total_s": 0.01},
            peak_memory_bytes=PEAK_BYTES,
            images={"trainer": "sha256:" + "f" * 64},
            logs={"train": spec.trial_dir / TRAIN_LOG_FILE},
            report={"status": "ok", "val_bpb": score, "artifact_sha256": "a" * 64} if ok else None,
        )

    def _starved(self, spec: TrialSpec) -> Verdict:
        """What a backend returns when the host took TRAIN's CPUs: no score, the evidence."""
        spec.trial_dir.mkdir(parents=True, exist_ok=True)
        (spec.trial_dir / TRAIN_LOG_FILE).write_bytes(b"step 00001 loss 3.2\n")
        compute = ComputeReport(share=0.4, cpu_s=8, wait_s=12, denied_s=12, allotment_cpus=2, wall_s=10)
        status, reason = classify_starved(compute, spec.min_compute_share) or (Status.OK, "")
        return trialdir.finish(
            spec,
            backend=self.name,
            status=status,
            val_bpb=None,
            reason=reason,
            train_log=b"",
            timings={"total_s": 0.01},
            peak_memory_bytes=PEAK_BYTES,
            images={"trainer": "sha256:" + "f" * 64},
            logs={"train": spec.trial_dir / TRAIN_LOG_FILE},
            report=None,
            compute=compute,
        )


def with_score(text: str, score: float) -> str:
    return _SCORE.sub(f"SCORE = {score:.6f}", text)


def with_outcome(text: str, outcome: str) -> str:
    return _OUTCOME.sub(f'OUTCOME = "{outcome}"', text)


def without_line(text: str, prefix: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(prefix))


def edit(fn: Callable[[str], str], description: str) -> Callable[[AgentContext], Proposal]:
    """An agent step that edits the current best train.py."""
    return lambda ctx: Proposal(train_py=fn(ctx.train_py), description=description)


def run_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """A RunConfig for a fresh run folder under tmp_path, with program.md and train.py written."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    program, train_py = tmp_path / "program.md", tmp_path / "train.py"
    if not program.exists():
        program.write_text(PROGRAM, encoding="utf-8")
    if not train_py.exists():
        train_py.write_text(START, encoding="utf-8")
    values: dict[str, Any] = {
        "run_dir": tmp_path / "run",
        "run_tag": "test",
        "profile": "tiny",
        "agent": "scripted",
        "backend": "fake",
        "program": program,
        "train_py": train_py,
        "limits": Limits(time_budget_s=5, kill_grace_s=1, mem_limit_mb=512, output_limit_mb=64),
        "judge": JudgeSettings(baseline_repeats=2, noise_k=2.0, min_delta=0.001, confirm_keeps=True),
        "retries": RetrySettings(sandbox_backoff_s=1.0, agent_backoff_s=1.0),
        "max_trials": None,
    }
    values.update(overrides)
    return RunConfig(**values)


class Sleeps:
    """A fake `sleep` that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_fakes_satisfy_the_protocols() -> None:
    assert isinstance(FakeSandbox(), Sandbox)
    assert isinstance(ScriptedAgent(), Agent)


def test_fake_sandbox_scores_only_ok_candidates(tmp_path: Path) -> None:
    limits = Limits(time_budget_s=5, kill_grace_s=1, mem_limit_mb=512, output_limit_mb=64)
    sandbox = FakeSandbox(noise=0.01)
    verdicts = {}
    for name, text in {"good": with_score(START, 0.9), "slow": with_outcome(START, "timeout")}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.py").write_text(text, encoding="utf-8")
        spec = TrialSpec(
            trial_id=name,
            candidate=folder / "train.py",
            trial_dir=folder,
            profile="tiny",
            limits=limits,
            seed=7,
        )
        verdicts[name] = sandbox.run_trial(spec)
        assert (folder / VERDICT_FILE).is_file()
    assert verdicts["good"].status is Status.OK
    assert verdicts["good"].val_bpb == 0.9 + 0.01 * jitter(7)
    assert verdicts["good"].claimed_val_bpb is not None and verdicts["good"].claimed_val_bpb < 0.5
    assert verdicts["slow"].status is Status.TIMEOUT and verdicts["slow"].val_bpb is None


def test_jitter_is_deterministic_and_bounded() -> None:
    values = [jitter(seed) for seed in range(1000)]
    assert all(-1.0 <= v < 1.0 for v in values)
    assert values == [jitter(seed) for seed in range(1000)]
    assert len(set(values)) > 900  # different seeds, different noise
