"""A docker test whose engine, image or gVisor runtime is missing skips on a developer's machine but
FAILS under CI (CI=true), where .ci/run starts the engine, registers runsc and builds the images.

Defeats a green CI that tested nothing: the runsc tests used to skip whenever runsc was not
registered, CI included, so a CI that lost gVisor still passed. Engine-free: the environment and the
engine's answer (`info()["Runtimes"]`) are faked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import conftest
from tests.conftest import engine_unusable, in_ci, require_runsc


class FakeEngine:
    """Answers `info()` like docker.DockerClient, with the runtimes given."""

    def __init__(self, *runtimes: str) -> None:
        self.runtimes = {name: {"path": name} for name in runtimes}

    def info(self) -> dict[str, Any]:
        return {"Runtimes": self.runtimes} if self.runtimes else {}


def outcome(check: Callable[[], object]) -> tuple[str, str]:
    """("skip" | "fail" | "pass", message): caught here, so a skip can never pass for this test's own."""
    try:
        check()
    except pytest.skip.Exception as exc:
        return "skip", str(exc)
    except pytest.fail.Exception as exc:
        return "fail", str(exc)
    return "pass", ""


@pytest.mark.parametrize(
    ("value", "ci"),
    [("true", True), ("1", True), ("yes", True), ("", False), ("false", False), ("0", False), (None, False)],
)
def test_ci_is_detected_from_the_ci_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_an_unusable_engine_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert outcome(lambda: engine_unusable("no engine here")) == ("skip", "no engine here")
    monkeypatch.setenv("CI", "true")
    kind, message = outcome(lambda: engine_unusable("no engine here"))
    assert kind == "fail" and "no engine here" in message and "CI must run the docker tests" in message


@pytest.mark.parametrize("runtimes", [(), ("runc",), ("runc", "nvidia")], ids=["none", "runc", "runc+nvidia"])
def test_runsc_missing_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, runtimes: tuple[str, ...]
) -> None:
    engine = FakeEngine(*runtimes)
    monkeypatch.delenv("CI", raising=False)
    kind, message = outcome(lambda: require_runsc(engine))  # type: ignore[arg-type]
    assert kind == "skip" and "runsc (gVisor) is not registered" in message
    monkeypatch.setenv("CI", "true")
    kind, message = outcome(lambda: require_runsc(engine))  # type: ignore[arg-type]
    assert kind == "fail" and "runsc (gVisor) is not registered" in message and "CI must run" in message


def test_runsc_registered_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    for ci in ("true", ""):
        monkeypatch.setenv("CI", ci)
        assert outcome(lambda: require_runsc(FakeEngine("runc", "runsc"))) == ("pass", "")  # type: ignore[arg-type]


def test_every_runsc_test_goes_through_the_rule() -> None:
    """No test file decides on its own to skip for a missing runsc: each asks for `runsc_client`."""
    from pathlib import Path

    here = Path(conftest.__file__).parent
    own_checks = []
    users = []
    for path in sorted(here.rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if '"Runtimes"' in text and path.name != Path(__file__).name:
            own_checks.append(path.name)
        if "runsc_client" in text and path.name != Path(__file__).name:
            users.append(path.name)
    assert own_checks == [], f"these read the engine's runtimes themselves; use runsc_client: {own_checks}"
    assert users == ["test_isolation_preflight_passes_under_runsc.py", "test_sandbox_baseline_scores.py"]
