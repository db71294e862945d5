"""Property: a container that allocates past its memory limit is OOM-killed, with no swap to hide in.

Attack defeated: a candidate that takes the host's memory (and with it the controller and the other
workers), or that buys speed with memory the budget does not account for. Preflight's memory probe runs
with the production flags and a small limit, touches memory until it dies, and the engine must report
OOMKilled with the probe never having held more than the limit. The production TRAIN limit itself is
checked in the engine's record (hardening_flags: Memory == MemorySwap == mem_limit_mb).
"""

from __future__ import annotations

import pytest

from sandbox.engine.limits import Limits, MiB
from sandbox.preflight.facts import MEM_PROBE_MB, PreflightResult

pytestmark = pytest.mark.docker


def test_allocating_past_the_limit_is_oom_killed(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("memory_limit")
    ev = check.evidence
    assert ev["oom_killed"] is True
    assert ev["exit_code"] == 137
    assert ev["survived"] is False
    assert 0 < ev["allocated_mib"] <= MEM_PROBE_MB
    assert check.passed, check.detail


def test_train_memory_equals_swap_limit(preflight_result: PreflightResult) -> None:
    ev = preflight_result.check("hardening_flags").evidence
    mem = Limits.for_profile("tiny").mem_limit_mb * MiB
    assert ev["Memory"] == mem
    assert ev["MemorySwap"] == mem
