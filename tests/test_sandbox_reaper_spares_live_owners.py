"""The reaper removes only what a dead controller on this host left; live or foreign owners are spared.

Property: an owner is judged dead only when its host label is this host and its pid is gone, or the
pid now belongs to a younger process (pid reuse, caught by the recorded start time). Labels from
another host or pid namespace, or labels that cannot be read, count as alive.
Attack (and accident) defeated: a second worker, or a controller in a container with its own pid
namespace, reaping the live trials of another worker because a pid number looks dead from where it
stands; and, the other way, a leak surviving for ever because its dead owner's pid was reused.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from sandbox import constants as C
from sandbox.engine.reaper import owner_is_dead, owner_labels, sandbox_labels


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_this_process_is_alive() -> None:
    assert not owner_is_dead(owner_labels())
    labels = sandbox_labels("t1", "train")
    assert labels[C.LABEL_APP] == C.LABEL_APP_VALUE and labels[C.LABEL_ROLE] == "train"
    assert not owner_is_dead(labels)


def test_a_dead_pid_on_this_host_is_dead() -> None:
    assert owner_is_dead(owner_labels() | {C.LABEL_OWNER_PID: str(_dead_pid())})


def test_a_reused_pid_is_dead() -> None:
    assert owner_is_dead(owner_labels() | {C.LABEL_OWNER_START: "1"})  # our pid, another start time


def test_foreign_or_unreadable_owners_are_alive() -> None:
    dead = owner_labels() | {C.LABEL_OWNER_PID: str(_dead_pid())}
    assert not owner_is_dead(dead | {C.LABEL_OWNER_HOST: socket.gethostname() + "-elsewhere"})
    assert not owner_is_dead(dead | {C.LABEL_OWNER_PID: "not-a-pid"})
    assert not owner_is_dead({C.LABEL_APP: C.LABEL_APP_VALUE})
