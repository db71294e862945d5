"""DockerSandbox and LocalSandbox write the same audit events for the same outcome (both derive them
with sandbox/engine/audit.py from the same engine-neutral values); the Docker one adds the engine's
container names. The output cap, enforced by the kernel only in a container, is recorded there.

Property: an auditor reads one format whatever backend ran the trial, and the engine-free backend's
tests of the audit trail mean something for the real one.
Attack defeated: a backend that quietly records less (a SIGKILL or a rejected artifact with no event).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.engine import audit
from sandbox.engine.docker import DockerSandbox
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

MakeSpec = Callable[..., TrialSpec]


def shape(spec: TrialSpec) -> list[tuple[str, str, Any]]:
    """(container, event, the detail that must agree) of each event."""
    out = []
    for e in audit.read_events(spec.trial_dir / C.AUDIT_FILE):
        d = e["detail"]
        same = {k: d.get(k) for k in ("status", "exit_code", "check", "probe", "budget_s", "grace_s")}
        if e["event"] == "limits":
            same = d["limits"]
        out.append((e["container"], e["event"], same))
    return out


@pytest.mark.parametrize(
    ("candidate", "limits"),
    [
        ("sleeper", {"time_budget_s": 1, "kill_grace_s": 1}),  # dies of SIGTERM: timeout
        # SIGTERM ignored, then SIGKILL: the budget leaves the container's Python time to install its
        # handler first (a SIGTERM before that would kill it, as with the sleeper).
        ("sigterm_ignorer", {"time_budget_s": 6, "kill_grace_s": 1}),
        ("forged_artifact", {}),  # exits 0, the real evaluator rejects the archive
    ],
)
def test_both_backends_record_the_same_events(
    docker_sandbox: DockerSandbox,
    make_spec: MakeSpec,
    tiny_data: Path,
    candidate: str,
    limits: dict[str, Any],
) -> None:
    in_docker, on_host = make_spec(candidate, **limits), make_spec(candidate, **limits)
    docker_verdict = docker_sandbox.run_trial(in_docker)
    local_verdict = LocalSandbox(data_dir=tiny_data).run_trial(on_host)
    assert docker_verdict.status is local_verdict.status
    assert shape(in_docker) == shape(on_host)
    events = [e["event"] for e in audit.read_events(in_docker.trial_dir / C.AUDIT_FILE)]
    assert events[0] == "limits" and events[-1] == "verdict"
    if candidate == "sleeper":
        assert events == ["limits", "sigterm", "exit", "verdict"]
    elif candidate == "sigterm_ignorer":
        assert events == ["limits", "sigterm", "sigkill", "exit", "verdict"]
    else:
        assert events == ["limits", "exit", "exit", "artifact_rejected", "verdict"]
    names = {
        e["container"]: e["detail"].get("container_name")
        for e in audit.read_events(in_docker.trial_dir / C.AUDIT_FILE)
        if e["event"] == "exit"
    }
    assert all(name and name.startswith(f"ar-{in_docker.trial_id}-") for name in names.values())


def test_the_output_cap_is_an_audit_event(docker_sandbox: DockerSandbox, make_spec: MakeSpec) -> None:
    spec = make_spec("output_flood", output_limit_mb=4, time_budget_s=20)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status.value == "output_limit"
    events = {e["event"]: e["detail"] for e in audit.read_events(spec.trial_dir / C.AUDIT_FILE)}
    assert events["output_cap"]["output_limit_mb"] == 4
    assert events["exit"]["status"] == "output_limit"
