"""A trial cancelled while it runs on a Ray node is killed there, its node reaped, and nothing of it
recorded; the trial run again later is a new attempt, accepted once.

What goes wrong without it: the controller stops waiting but the node keeps the trial's containers
running on that node's CPUs (a cancelled trial starves the next one there), or a late result of the
cancelled dispatch lands in the trial folder after the loop has moved on. RaySandbox.run_trial
waits on the caller's cancel event; when it is set, the task is cancelled with force (the Ray worker
dies), the dispatch is closed `cancelled` (no result of it can be accepted), a reap task pinned to
that node runs once the task has resolved, and `TrialCancelled` is raised.

The first two tests replace Ray with a scripted fake (no processes); the last runs on the real local
cluster (the `ray_cluster` fixture) with an engine-free node runner.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster import dispatch as dispatch_mod
from sandbox.cluster.dispatch import RaySandbox
from sandbox.cluster.journal import DispatchJournal, journal_summary
from sandbox.cluster.verify import ClusterPins
from sandbox.cluster.wire import NodeFacts
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialCancelled, TrialSpec
from tests.ray_cluster import FAKE_IMAGE, FakeNodeRunner, LocalCluster, marks
from tests.test_loop_fakes_honour_the_protocols import START

LIMITS = Limits(time_budget_s=5, kill_grace_s=1)
NODE = "ab" * 28


def _spec(tmp_path: Path, trial_id: str) -> TrialSpec:
    candidate = tmp_path / f"{trial_id}.py"
    candidate.write_text(START, encoding="utf-8")
    return TrialSpec(
        trial_id=trial_id,
        candidate=candidate,
        trial_dir=tmp_path / "run" / "trials" / trial_id / "run0",
        profile="tiny",
        limits=LIMITS,
        seed=3,
    )


# --------------------------------------------------------------------------- with a scripted Ray


class _Ref:
    def __init__(self, name: str) -> None:
        self.name = name


class _Task:
    def __init__(self, ray: FakeRay, fn: Any) -> None:
        self.ray, self.fn, self.opts = ray, fn, {}

    def options(self, **opts: Any) -> _Task:
        self.opts = opts
        return self

    def remote(self, *args: Any) -> _Ref:
        ref = _Ref(self.fn.__name__)
        self.ray.calls.append((self.fn.__name__, self.opts))
        return ref


class FakeRay:
    """The trial task never finishes on its own; once cancelled it resolves (as TaskCancelledError)."""

    def __init__(self) -> None:
        import ray.exceptions

        self.exceptions = ray.exceptions
        self.cancelled: list[tuple[str, bool]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def wait(self, refs: list[_Ref], timeout: float) -> tuple[list[_Ref], list[_Ref]]:
        if any(name == refs[0].name for name, _ in self.cancelled):
            return refs, []
        time.sleep(min(timeout, 0.02))
        return [], refs

    def cancel(self, ref: _Ref, force: bool = False) -> None:
        self.cancelled.append((ref.name, force))

    def remote(self, fn: Any) -> _Task:
        return _Task(self, fn)

    def get(self, ref: _Ref, timeout: float | None = None) -> Any:
        if ref.name == "reap_node":
            return {"node_id": NODE, "containers": 2, "volumes": 3}
        raise self.exceptions.TaskCancelledError()


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[RaySandbox, FakeRay]:
    fake = FakeRay()
    monkeypatch.setattr(dispatch_mod, "_ray", lambda: fake)
    sandbox = RaySandbox("fake:1", tmp_path / "run", profile="tiny", limits=LIMITS, connect=False)
    sandbox.pins = ClusterPins(image_id=FAKE_IMAGE, data_sha256="d" * 64, hardware_class="cpu:fake")
    sandbox.nodes = {
        NODE: NodeFacts(
            node_id=NODE, node_name="node-0", hostname="h", hardware_class="cpu:fake", problems=[]
        )
    }
    monkeypatch.setattr(sandbox, "submit", lambda spec, source, node, d: _Ref("run_on_node"))
    return sandbox, fake


def test_cancel_mid_wait_kills_with_force_reaps_the_node_and_closes_the_dispatch(
    scripted: tuple[RaySandbox, FakeRay], tmp_path: Path
) -> None:
    sandbox, fake = scripted
    spec = _spec(tmp_path, "t0001")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TrialCancelled):
        sandbox.run_trial(spec, cancel)
    assert time.monotonic() - started < 5, "the cancel was not noticed while waiting"
    assert fake.cancelled == [("run_on_node", True)], "the task is cancelled once, with force"
    reaps = [opts for name, opts in fake.calls if name == "reap_node"]
    assert len(reaps) == 1 and reaps[0]["scheduling_strategy"].node_id == NODE, "the reap runs on that node"
    assert journal_summary(sandbox.run_dir) == {"cancelled": 1}
    assert not (spec.trial_dir / "verdict.json").exists()
    assert sandbox._in_flight[NODE] == 0, "the node's seat is given back"

    # A late result of the cancelled dispatch cannot be accepted; the trial run again is attempt 2.
    journal = DispatchJournal(sandbox.run_dir)
    (first,) = [d for d in journal.events() if d["event"] == "dispatch"]
    again = journal.open(spec.trial_id, NODE, "node-0")
    assert again.attempt == 2 and again.dispatch_id != first["dispatch_id"]


def test_cancel_set_before_dispatch_sends_nothing(
    scripted: tuple[RaySandbox, FakeRay], tmp_path: Path
) -> None:
    sandbox, fake = scripted
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrialCancelled):
        sandbox.run_trial(_spec(tmp_path, "t0002"), cancel)
    assert fake.calls == [] and fake.cancelled == []
    assert DispatchJournal(sandbox.run_dir).events() == [], "no dispatch was recorded"


# --------------------------------------------------------------------------- on the real local cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_on_a_real_cluster(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    mark_dir, reap_dir = tmp_path / "marks", tmp_path / "reaps"
    mark_dir.mkdir()
    reap_dir.mkdir()
    slow = FakeNodeRunner(delay_s=120, marks=mark_dir, reaps=reap_dir)
    sandbox = RaySandbox(ray_cluster.address, run_dir, profile="tiny", limits=LIMITS, runner=slow)
    reaps_at_setup = set(reap_dir.iterdir())
    spec = _spec(tmp_path, "t0003")
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    running = pool.submit(sandbox.run_trial, spec, cancel)
    deadline = time.monotonic() + 60
    while not list(mark_dir.iterdir()):
        assert time.monotonic() < deadline, "the trial never started on a node"
        time.sleep(0.2)
    (mark,) = list(marks(mark_dir))
    cancel.set()
    with pytest.raises(TrialCancelled):
        running.result(timeout=90)
    pool.shutdown()
    assert not _alive(int(str(mark["pid"]))), "the Ray worker that ran the trial is still alive"
    reaped_on = [p.read_text() for p in set(reap_dir.iterdir()) - reaps_at_setup]
    assert reaped_on == [mark["node_id"]], "one reap, on the node that ran the trial"
    assert journal_summary(run_dir) == {"cancelled": 1}
    assert not (spec.trial_dir / "verdict.json").exists()

    resumed = RaySandbox(ray_cluster.address, run_dir, profile="tiny", limits=LIMITS, runner=FakeNodeRunner())
    verdict = resumed.run_trial(spec)
    assert verdict.node is not None and verdict.node.dispatch_id.startswith(f"{spec.trial_id}.a2.")
    assert journal_summary(run_dir) == {"cancelled": 1, "accepted": 1}
