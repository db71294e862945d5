"""Property: TRAIN's output channel holds at most its configured size; writing past it fails.

Attack defeated: a candidate that fills the host's disk or memory through its only writable mount, or
hands the evaluator an artifact too large to load. Preflight's probe writes into the production output
volume until the kernel refuses; the refusal must be ENOSPC/EFBIG at the configured output_limit_mb.
"""

from __future__ import annotations

import pytest

from sandbox.engine.limits import Limits, MiB
from sandbox.preflight.facts import OUTPUT_FULL_ERRNOS, PreflightResult

pytestmark = pytest.mark.docker


def test_writing_past_the_cap_fails_at_the_cap(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("output_cap")
    ev = check.evidence
    cap = Limits.for_profile("tiny").output_limit_mb * MiB
    assert ev["cap_bytes"] == cap
    assert ev["stopped_by"] in OUTPUT_FULL_ERRNOS
    assert 0.9 * cap <= ev["written"] <= cap + MiB
    assert check.passed, check.detail
