"""Every engine behind the trial template shows the same behaviour for the same candidate.

Property: the verdict, the files and the audit events of a trial depend on what the candidate did,
not on which engine ran it. Each check below is one behaviour every engine must show (in the style of
inspect_ai's sandbox self-check); engines are parametrized, local always, docker where an engine and
the images exist (marked `docker`). What an engine cannot do is listed in KNOWN_DIFFERENCES (and in
docs/ARCHITECTURE.md), and the checks read the table instead of skipping.
Attack defeated: an engine that quietly does less (no kill at the budget, no output cap, an
artifact-less exit scored, a cancelled trial left running, a missing audit event) fails here, not
in production.
"""

from __future__ import annotations

import json
import math
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine import audit
from sandbox.engine.backend import Sandbox
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import TrialCancelled, TrialSpec, Verdict

MakeSpec = Callable[..., TrialSpec]
NUL = bytes(1)  # separates the arguments in /proc/<pid>/cmdline

# engine -> behaviour -> how it differs. Checks consult it; nothing here is a skip.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    "local": {
        "isolation": "none: the candidate runs as the user, with the network, the disk and val/ readable",
        "memory_limit": "none: never `oom`; peak memory is the candidate process's VmHWM",
        "output_cap": "checked once TRAIN has exited, not enforced on each write",
        "clock_escape": "a process that leaves the process group escapes the SIGKILL",
        "container_names": "no containers: audit events carry no container_name",
        "images": "no image: verdict.images is {}",
    },
    "docker": {},
}


@dataclass
class EngineUnderTest:
    name: str
    sandbox: Sandbox
    leftovers: Callable[[TrialSpec], list[str]]  # what of the trial still exists after run_trial returned

    def differs_in(self, behaviour: str) -> bool:
        return behaviour in KNOWN_DIFFERENCES[self.name]


def _local_leftovers(spec: TrialSpec) -> list[str]:
    """Live processes running the trial's candidate (the staged copy, or a child started with its path)."""
    staged = str((spec.trial_dir / C.CANDIDATE_FILE).resolve()).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if staged in cmdline:
            found.append(f"pid {proc.name}: {cmdline.replace(NUL, b' ').decode(errors='replace')}")
    return found


def _docker_leftovers(client: Any, spec: TrialSpec) -> list[str]:
    """Containers and volumes that carry the trial's label."""
    selector = {"label": [f"{C.LABEL_APP}={C.LABEL_APP_VALUE}", f"{C.LABEL_TRIAL}={spec.trial_id}"]}
    containers = [f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
    return containers + [f"volume {v.name}" for v in client.volumes.list(filters=selector)]


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def engine(request: pytest.FixtureRequest, tiny_data: Path) -> EngineUnderTest:
    if request.param == "local":
        return EngineUnderTest("local", LocalSandbox(data_dir=tiny_data), _local_leftovers)
    client = request.getfixturevalue("docker_client")
    sandbox = request.getfixturevalue("docker_sandbox")
    return EngineUnderTest("docker", sandbox, lambda spec: _docker_leftovers(client, spec))


def _candidate(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def _events(spec: TrialSpec) -> list[dict[str, Any]]:
    return list(audit.read_events(spec.trial_dir / C.AUDIT_FILE))


def _names(spec: TrialSpec) -> list[str]:
    return [e["event"] for e in _events(spec)]


def _verdict_file(spec: TrialSpec) -> Verdict:
    return Verdict.model_validate_json((spec.trial_dir / C.VERDICT_FILE).read_text())


# --------------------------------------------------------------------------- the checks


def test_honest_run_scores_ok(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    spec = make_spec("tiny_export", time_budget_s=120)
    verdict = engine.sandbox.run_trial(spec)
    assert verdict.status is Status.OK, verdict.reason
    assert verdict.val_bpb is not None and math.isfinite(verdict.val_bpb) and verdict.val_bpb > 0
    assert verdict.report is not None and verdict.report.val_bpb == verdict.val_bpb
    assert verdict.backend == engine.name
    assert _names(spec) == ["limits", "exit", "exit", "verdict"]
    assert engine.leftovers(spec) == []


def test_crash_in_train_is_crash(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    spec = make_spec("crash")
    verdict = engine.sandbox.run_trial(spec)
    assert verdict.status is Status.CRASH
    assert "exited with code 1" in verdict.reason
    assert "candidate bug" in Path(verdict.logs["train"]).read_text()
    assert "eval_wall_s" not in verdict.timings  # nothing was evaluated
    assert _names(spec) == ["limits", "exit", "verdict"]


def test_timeout_is_killed_at_the_budget(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    budget, grace = 2, 1
    spec = make_spec("sleeper", time_budget_s=budget, kill_grace_s=grace)
    verdict = engine.sandbox.run_trial(spec)
    assert verdict.status is Status.TIMEOUT
    sigterm = next(e for e in _events(spec) if e["event"] == "sigterm")
    assert budget <= sigterm["detail"]["at_s"] < budget + 1.5
    assert verdict.timings["train_wall_s"] < budget + grace + 1.5
    assert _names(spec) == ["limits", "sigterm", "exit", "verdict"]


def test_missing_artifact_is_crash(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    spec = make_spec("forged_score")  # prints a score, exports nothing, exits 0
    verdict = engine.sandbox.run_trial(spec)
    assert verdict.status is Status.CRASH
    assert "wrote no model.pt2" in verdict.reason
    assert verdict.val_bpb is None and verdict.claimed_val_bpb == pytest.approx(0.0001)
    assert _names(spec) == ["limits", "exit", "verdict"]


def test_output_past_the_cap_is_output_limit(
    engine: EngineUnderTest, make_spec: MakeSpec, tmp_path: Path
) -> None:
    writer = _candidate(
        tmp_path,
        "writer",
        """
        import os
        with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.pt2"), "wb") as f:
            f.write(b"x" * (3 * 1024 * 1024))
        """,
    )
    spec = make_spec(writer, output_limit_mb=2)
    verdict = engine.sandbox.run_trial(spec)
    assert verdict.status is Status.OUTPUT_LIMIT
    cap = next(e for e in _events(spec) if e["event"] == "output_cap")
    assert cap["detail"]["output_limit_mb"] == 2
    assert _names(spec) == ["limits", "output_cap", "exit", "verdict"]


def test_cancel_raises_trial_cancelled_within_seconds_and_leaves_nothing(
    engine: EngineUnderTest, make_spec: MakeSpec, tmp_path: Path
) -> None:
    # A candidate with a child, both running the candidate's own path: the whole trial must go.
    sleeper = _candidate(
        tmp_path,
        "parent_and_child",
        """
        import subprocess, sys, time
        if sys.argv[1:] != ["child"]:
            subprocess.Popen([sys.executable, __file__, "child"])
        print("sleeping", flush=True)
        time.sleep(10**6)
        """,
    )
    spec = make_spec(sleeper, time_budget_s=120)
    cancel = threading.Event()
    set_at: list[float] = []

    def fire() -> None:
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(1.5, fire)
    timer.start()
    try:
        with pytest.raises(TrialCancelled):
            engine.sandbox.run_trial(spec, cancel)
        returned = time.monotonic()
    finally:
        timer.cancel()
    assert returned - set_at[0] < 3.0, "a cancelled trial must stop, and clean up, within seconds"
    assert engine.leftovers(spec) == []
    assert not (spec.trial_dir / C.VERDICT_FILE).exists()
    last = _events(spec)[-1]
    assert last["event"] == "infrastructure_error" and last["detail"]["error"] == "TrialCancelled"


def test_verdict_json_and_audit_jsonl_are_written(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    spec = make_spec("crash")
    verdict = engine.sandbox.run_trial(spec)
    assert _verdict_file(spec) == verdict
    for name in ("candidate", "sandbox", "audit", "train"):
        assert Path(verdict.logs[name]).is_file(), name
    lines = (spec.trial_dir / C.AUDIT_FILE).read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(tuple(e) == audit.KEYS and e["trial_id"] == spec.trial_id for e in events)
    assert events[-1]["detail"]["status"] == verdict.status.value


def test_audit_events_name_the_engines_objects(engine: EngineUnderTest, make_spec: MakeSpec) -> None:
    spec = make_spec("crash")
    verdict = engine.sandbox.run_trial(spec)
    exit_event = next(e for e in _events(spec) if e["event"] == "exit")
    limits_event = next(e for e in _events(spec) if e["event"] == "limits")
    if engine.differs_in("container_names"):
        assert "container_name" not in exit_event["detail"]
    else:
        assert exit_event["detail"]["container_name"].startswith(f"ar-{spec.trial_id}-")
    if engine.differs_in("images"):
        assert verdict.images == {} and limits_event["detail"]["images"] == {}
    else:
        assert verdict.images and limits_event["detail"]["images"] == verdict.images
