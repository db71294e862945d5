"""Property: no secret of the controller reaches the candidate's environment.

Attack defeated: a candidate that reads ANTHROPIC_API_KEY (or any token of the controller) from its
environment, or from another process's /proc/PID/environ, and spends or exfiltrates it. Preflight plants
a canary API key in the controller's environment while it starts the production TRAIN container, then
the probe dumps every environment it can read; neither the canary nor any secret-looking variable of
the controller may appear there, or in the engine's record of the container.
"""

from __future__ import annotations

import pytest

from sandbox.preflight.facts import CANARY_NAME, PreflightResult

pytestmark = pytest.mark.docker


def test_the_canary_and_controller_secrets_are_absent(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_secrets_in_env")
    ev = check.evidence
    assert CANARY_NAME in ev["secrets_checked"], "the canary was not planted"
    assert ev["leaks"] == []
    assert "self" in ev["environs_read"] and len(ev["environs_read"]) >= 2  # its own and pid 1's at least
    assert CANARY_NAME not in ev["container_env_names"]
    assert check.passed, check.detail
