"""The controller writes a trial's result once, and only for a dispatch it still has open.

Attacks on the records: a late duplicate of a result (a Ray retry, or the same return delivered
twice) must not write the trial folder again; a result for a dispatch a killed controller left open
must not be accepted by the resumed controller (it closes such dispatches as `orphaned` at start);
a return that names another dispatch, or a trial folder with a link or a `..` in it, is refused
with nothing written. Also: a node whose trainer image differs from the run's pin is refused at
setup and never gets a trial, whether the run pins the image explicitly or takes the nodes' majority.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from harness.records.manifest import hash_tree
from sandbox.cluster.dispatch import DuplicateResult, RaySandbox
from sandbox.cluster.journal import DispatchJournal, journal_summary
from sandbox.cluster.wire import ArchiveError, unpack_trial_dir
from sandbox.engine.limits import Limits
from sandbox.verdict import SandboxError, TrialSpec
from tests.ray_cluster import ENV_FAKE_IMAGE, FAKE_IMAGE, FakeNodeRunner, LocalCluster
from tests.test_loop_fakes_honour_the_protocols import START

LIMITS = Limits(time_budget_s=5, kill_grace_s=1)


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


def _sandbox(cluster: LocalCluster, run_dir: Path) -> RaySandbox:
    return RaySandbox(cluster.address, run_dir, profile="tiny", limits=LIMITS, runner=FakeNodeRunner())


def test_a_late_duplicate_is_dropped(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    import ray

    run_dir = tmp_path / "run"
    sandbox = _sandbox(ray_cluster, run_dir)
    spec = _spec(tmp_path, "t0001")
    node = next(iter(sandbox.nodes.values()))
    dispatch = sandbox.journal.open(spec.trial_id, node.node_id, node.node_name)
    raw = ray.get(sandbox.submit(spec, spec.candidate.read_text(), node, dispatch))

    verdict = sandbox.land(spec, node, dispatch, raw)
    assert verdict.node is not None and verdict.node.dispatch_id == dispatch.dispatch_id
    before = hash_tree(spec.trial_dir)
    (spec.trial_dir / "train.log").write_text("edited by the controller's own audit\n")
    after_edit = hash_tree(spec.trial_dir)
    assert before != after_edit

    with pytest.raises(DuplicateResult):
        sandbox.land(spec, node, dispatch, raw)
    assert hash_tree(spec.trial_dir) == after_edit, "the duplicate wrote nothing"
    assert journal_summary(run_dir) == {"accepted": 1}
    assert [e["event"] for e in DispatchJournal(run_dir).events()] == ["dispatch", "accepted", "duplicate"]


def test_a_dispatch_left_open_by_a_killed_controller_is_never_accepted(
    ray_cluster: LocalCluster, tmp_path: Path
) -> None:
    import ray

    run_dir = tmp_path / "run"
    first = _sandbox(ray_cluster, run_dir)
    spec = _spec(tmp_path, "t0002")
    node = next(iter(first.nodes.values()))
    dispatch = first.journal.open(spec.trial_id, node.node_id, node.node_name)
    raw = ray.get(first.submit(spec, spec.candidate.read_text(), node, dispatch))
    # The controller dies here, before landing the result. The resumed one starts:
    resumed = _sandbox(ray_cluster, run_dir)
    assert journal_summary(run_dir) == {"orphaned": 1}
    with pytest.raises(DuplicateResult):
        resumed.land(spec, node, dispatch, raw)
    assert not (spec.trial_dir / "verdict.json").exists(), "nothing of the orphan was written"

    verdict = resumed.run_trial(spec)  # the resumed loop runs the trial again: the next attempt
    assert verdict.node is not None
    events = [e for e in DispatchJournal(run_dir).events() if e["event"] == "dispatch"]
    assert [e["attempt"] for e in events] == [1, 2]
    assert journal_summary(run_dir) == {"orphaned": 1, "accepted": 1}


def test_a_return_for_another_dispatch_is_refused(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    import ray

    run_dir = tmp_path / "run"
    sandbox = _sandbox(ray_cluster, run_dir)
    a, b = _spec(tmp_path, "t0003"), _spec(tmp_path, "t0004")
    node = next(iter(sandbox.nodes.values()))
    da = sandbox.journal.open(a.trial_id, node.node_id, node.node_name)
    db = sandbox.journal.open(b.trial_id, node.node_id, node.node_name)
    raw_a = ray.get(sandbox.submit(a, a.candidate.read_text(), node, da))
    with pytest.raises(SandboxError, match="not this dispatch"):
        sandbox.land(b, node, db, raw_a)
    assert not b.trial_dir.exists()


def _tar(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, kind",
    [
        ("../escape.txt", tarfile.REGTYPE),
        ("/abs.txt", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
        ("hard", tarfile.LNKTYPE),
    ],
)
def test_an_unsafe_trial_archive_writes_nothing(tmp_path: Path, name: str, kind: bytes) -> None:
    good = tarfile.TarInfo("train.log")
    good.size = 1
    bad = tarfile.TarInfo(name)
    bad.type = kind
    if kind == tarfile.REGTYPE:
        bad.size = 1
    else:
        bad.linkname = "/etc/passwd"
    dest = tmp_path / "trial"
    with pytest.raises(ArchiveError):
        unpack_trial_dir(_tar(good, bad), dest)
    assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "escape.txt").exists()


def test_an_oversized_trial_archive_is_refused(tmp_path: Path) -> None:
    big = tarfile.TarInfo("model.bin")
    big.size = 2048
    with pytest.raises(ArchiveError, match="more than"):
        unpack_trial_dir(_tar(big, data=b"0" * 2048), tmp_path / "trial", max_bytes=1024)


def test_a_node_with_another_image_is_refused(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    odd = ray_cluster.add_node("node-odd", env={ENV_FAKE_IMAGE: "sha256:" + "0" * 64})
    try:
        run_dir = tmp_path / "run"
        sandbox = _sandbox(ray_cluster, run_dir)
        assert odd not in sandbox.nodes
        assert "trainer image" in sandbox.refused[odd]
        assert set(sandbox.nodes) >= {ray_cluster.nodes["node-0"], ray_cluster.nodes["node-1"]}
        pinned = RaySandbox(
            ray_cluster.address,
            tmp_path / "pinned",
            profile="tiny",
            limits=LIMITS,
            runner=FakeNodeRunner(),
            image_id=FAKE_IMAGE,
        )
        assert odd not in pinned.nodes and "trainer image" in pinned.refused[odd]
        landed = {sandbox.run_trial(_spec(tmp_path, f"t01{k:02d}")).node.node_id for k in range(4)}  # type: ignore[union-attr]
        assert odd not in landed
    finally:
        ray_cluster.kill_node("node-odd")
