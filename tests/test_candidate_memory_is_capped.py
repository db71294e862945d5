"""TRAIN's memory is capped by the kernel, without swap, and exceeding it is the status `oom`.

Property: a candidate that allocates without bound is OOM-killed inside its own cgroup at
`mem_limit_mb` (memswap equal, so no swapping either); the engine reports OOMKilled and the verdict is
`oom`; the peak memory in the verdict is the controller's measurement, at or below the limit.
Attack defeated: starving the host (or the other workers on it) of memory, or pushing it into swap.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox.constants import Status
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def test_allocating_past_the_limit_is_oom(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    limit_mb = 256
    spec = make_spec("memory_hog", mem_limit_mb=limit_mb, output_limit_mb=16, time_budget_s=20)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.OOM
    assert verdict.timings["train_wall_s"] < 20  # killed by the kernel, not by the clock
    assert verdict.peak_memory_gb is not None
    assert 64 / 1024 < verdict.peak_memory_gb <= limit_mb / 1024 + 0.01
