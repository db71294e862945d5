"""The lineage is a git repository of its own whose refs follow the ledger: one commit per
candidate, keeps advance the run branch, discards stay reachable under refs/autoresearch/discarded,
and after a crash `reconcile` moves every ref to where the ledger says it belongs (a commit without
a ledger row goes under refs/autoresearch/orphaned). Commits need no git configuration and carry
the fixed author whatever the user's environment says.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.records.lineage import (
    DISCARDED,
    ORPHANED,
    PENDING,
    Lineage,
    LineageError,
    check_run_tag,
    git_env,
)
from sandbox.constants import Decision

START = "x = 1\n"


def git(lineage: Lineage, *args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={lineage.path}", *args], capture_output=True, text=True, check=True, env=git_env()
    ).stdout


@pytest.fixture
def lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lineage:
    # A hostile environment: these must not leak into the run's commits.
    monkeypatch.setenv("GIT_AUTHOR_NAME", "someone else")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return Lineage(tmp_path / "lineage", "night-1")


def test_root_commit_holds_the_starting_train_py_on_the_run_branch(lineage: Lineage) -> None:
    root = lineage.ensure_root(START)
    assert lineage.head() == root == lineage.root()
    assert lineage.ensure_root("ignored on the second call") == root
    assert lineage.read(root) == START
    assert git(lineage, "symbolic-ref", "HEAD").strip() == "refs/heads/autoresearch/night-1"
    assert (
        git(lineage, "log", "-1", "--format=%an <%ae>", root).strip()
        == "autoresearch <autoresearch@localhost>"
    )
    assert git(lineage, "ls-tree", "--name-only", root).split() == ["train.py"]


def test_keep_advances_discard_stays_reachable(lineage: Lineage) -> None:
    root = lineage.ensure_root(START)
    kept = lineage.commit_candidate("x = 2\n", parent=root, trial_id="t0003", description="two")
    dropped = lineage.commit_candidate("x = 3\n", parent=root, trial_id="t0004", description="three")
    assert set(lineage.refs(PENDING)) == {"t0003", "t0004"}
    assert lineage.head() == root  # nothing moves before the judge decides
    lineage.keep("t0003", kept, expected_head=root)
    lineage.discard("t0004", dropped)
    assert lineage.head() == kept
    assert lineage.refs(DISCARDED) == {"t0004": dropped}
    assert lineage.refs(PENDING) == {}
    assert git(lineage, "log", "--format=%s", "autoresearch/night-1").splitlines() == [
        "t0003: two",
        "baseline: the starting train.py",
    ]
    assert lineage.read(dropped) == "x = 3\n"


def test_keep_refuses_when_the_branch_moved_underneath(lineage: Lineage) -> None:
    root = lineage.ensure_root(START)
    a = lineage.commit_candidate("x = 2\n", parent=root, trial_id="t0001", description="a")
    b = lineage.commit_candidate("x = 3\n", parent=root, trial_id="t0002", description="b")
    lineage.keep("t0001", a, expected_head=root)
    with pytest.raises(LineageError):
        lineage.keep("t0002", b, expected_head=root)
    assert lineage.head() == a


def test_reconcile_follows_the_ledger(lineage: Lineage) -> None:
    root = lineage.ensure_root(START)
    kept = lineage.commit_candidate("x = 2\n", parent=root, trial_id="t0001", description="kept")
    crashed = lineage.commit_candidate("x = (\n", parent=kept, trial_id="t0002", description="crash")
    orphan = lineage.commit_candidate("x = 4\n", parent=kept, trial_id="t0003", description="no row")
    running = lineage.commit_candidate("x = 5\n", parent=kept, trial_id="t0004", description="re-run")
    # The controller died after writing t0001's and t0002's rows, before moving any ref.
    changes = lineage.reconcile(
        best_commit=kept,
        decided={"t0001": (Decision.KEEP, kept), "t0002": (Decision.CRASH, crashed)},
        in_progress={"t0004"},
    )
    assert lineage.head() == kept
    assert lineage.refs(DISCARDED) == {"t0002": crashed}
    assert lineage.refs(ORPHANED) == {"t0003": orphan}
    assert lineage.refs(PENDING) == {"t0004": running}
    assert len(changes) == 4
    assert lineage.reconcile(best_commit=kept, decided={}, in_progress={"t0004"}) == []  # idempotent


def test_reconcile_moves_a_branch_that_got_ahead_of_the_ledger(lineage: Lineage) -> None:
    root = lineage.ensure_root(START)
    c = lineage.commit_candidate("x = 2\n", parent=root, trial_id="t0001", description="c")
    lineage.keep("t0001", c, expected_head=root)
    lineage.reconcile(best_commit=root, decided={}, in_progress=set())
    assert lineage.head() == root


def test_run_tags_must_name_a_branch() -> None:
    assert check_run_tag("tiny-offline.2") == "tiny-offline.2"
    for bad in ("", "-x", "a b", "a..b", "x.lock", "a/b"):
        with pytest.raises(ValueError):
            check_run_tag(bad)
