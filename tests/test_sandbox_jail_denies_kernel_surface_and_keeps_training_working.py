"""The jail (sandbox/incontainer/jail.py) denies the kernel surface it names, and nothing a trainer needs.

Run on the host as a real process: the filter is installed, then the probe is exec'd under it, as in
the containers. Each denied call is made for real with arguments that would succeed without the
filter (the control run proves it for the ones an unprivileged host process may make), while threads,
fork/exec, plain clone and numpy keep working. The red-team suite (tests/attacks/) checks the same
calls inside TRAIN on both tiers.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.incontainer import jail

REPO = Path(__file__).resolve().parents[1]
JAIL = REPO / "sandbox" / "incontainer" / "jail.py"

PROBE = r"""
import ctypes, json, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
NR = json.loads(os.environ["NR"])
def call(name, *args):
    r = libc.syscall(NR[name], *args)
    return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
params = ctypes.create_string_buffer(120)
out = {
    "io_uring_setup": call("io_uring_setup", 1, params),
    "unshare_user": call("unshare", 0x10000000),
    "clone_newuser": call("clone", 0x10000000 | 17, 0, 0, 0, 0),
    "clone3": call("clone3", 0, 0),
    "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
    "userfaultfd": call("userfaultfd", 0),
    "keyctl": call("keyctl", 0, -3, 0),
}
t = threading.Thread(target=lambda: None); t.start(); t.join()
out["thread"] = "ok"
out["fork_exec"] = subprocess.run(["true"]).returncode
import numpy
out["numpy"] = float(numpy.arange(4).sum())
print(json.dumps(out))
"""

DENIED = {"Operation not permitted"}


def _run(*, jailed: bool) -> dict[str, object]:
    machine = platform.machine()
    if machine not in jail.ARCHES:
        pytest.skip(f"no syscall table for {machine}")
    env = {"NR": json.dumps(jail.ARCHES[machine][1]), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-c", PROBE]
    cmd = [sys.executable, "-I", "-S", str(JAIL), *argv] if jailed else argv
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_named_calls_are_denied_and_training_primitives_still_work() -> None:
    jailed = _run(jailed=True)

    for name in (
        "io_uring_setup",
        "unshare_user",
        "clone_newuser",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
    ):
        assert jailed[name] in DENIED, (name, jailed[name])
    assert jailed["clone3"] == "Function not implemented"  # so libc falls back to clone
    assert jailed["thread"] == "ok" and jailed["fork_exec"] == 0 and jailed["numpy"] == 6.0


def test_without_the_jail_the_same_probe_reaches_io_uring() -> None:
    """The control: the denial above is the filter's doing, not the host's (skips where the host
    itself refuses io_uring, e.g. kernel.io_uring_disabled)."""
    free = _run(jailed=False)
    if free["io_uring_setup"] != "ok":
        pytest.skip(f"this host refuses io_uring by itself: {free['io_uring_setup']}")
    assert free["clone3"] != "Function not implemented"  # the kernel has clone3: ENOSYS was the filter's
    assert free["thread"] == "ok" and free["numpy"] == 6.0


def test_every_denied_name_has_a_number_on_every_supported_machine() -> None:
    for machine, (_, numbers) in jail.ARCHES.items():
        missing = [name for name in (*jail.DENIED_NAMES, "clone", "clone3") if name not in numbers]
        assert not missing, (machine, missing)
        insns = jail.program(machine)
        assert insns[-3:] == [
            (jail.RET, 0, 0, jail.RET_ALLOW),
            (jail.RET, 0, 0, jail.RET_ERRNO | 1),
            (jail.RET, 0, 0, jail.RET_ERRNO | 38),
        ]


def test_an_unsupported_machine_refuses_to_start_unfiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail.platform, "machine", lambda: "mips")
    assert jail.main(["true"]) == 126
