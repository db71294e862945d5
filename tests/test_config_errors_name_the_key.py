"""The configuration works with no file on a fresh machine, layers flags over the environment over
autoresearch.toml, is frozen, and a broken configuration is a message naming each bad key and why,
never a traceback and never a silent fallback to a default (a typo is an error).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.config import (
    ConfigError,
    default_run_dir,
    load_settings,
    resolve_agent,
    resolve_profile,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AUTORESEARCH_PROFILE",
        "AUTORESEARCH_AGENT",
        "AUTORESEARCH_MAX_TRIALS",
        "AUTORESEARCH_SEED",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_work_without_any_file(tmp_path: Path) -> None:
    s = load_settings(cwd=tmp_path)
    assert (s.profile, s.agent, s.backend, s.max_trials) == ("auto", "auto", "docker", None)
    assert s.judge.baseline_repeats == 3 and s.judge.confirm_keeps
    with pytest.raises(ValidationError):
        s.profile = "gpu"


def test_flags_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "autoresearch.toml").write_text(
        'profile = "gpu"\nagent = "offline"\nmax_trials = 5\n[judge]\nnoise_k = 3.0\n[limits]\nmem_limit_mb = 2048\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("AUTORESEARCH_AGENT", "replay")
    monkeypatch.setenv("AUTORESEARCH_JUDGE__MIN_DELTA", "0.01")
    monkeypatch.setenv("AUTORESEARCH_OUT", "/not/a/field")  # train.py's variable: ignored here
    s = load_settings(cwd=tmp_path, overrides={"max_trials": 7, "profile": None})
    assert s.profile == "gpu"  # from the file (the None flag does not override)
    assert s.agent == "replay"  # the environment beats the file
    assert s.max_trials == 7  # the flag beats both
    assert s.judge.noise_k == 3.0 and s.judge.min_delta == 0.01
    assert s.limits == {"mem_limit_mb": 2048}


def test_broken_config_names_every_key_and_why(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'profile = "huge"\nmax_trial = 3\n[judge]\nnoise_k = -1\n[limits]\nmem_limit_mb = 10\nwarp_speed = 9\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, cwd=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "profile:" in message and "'huge'" in message
    assert "max_trial: Extra inputs are not permitted" in message  # a typo is an error
    assert "judge.noise_k:" in message and "greater than or equal to 0" in message
    assert "mem_limit_mb" in message and "64" in message
    assert "unknown limit 'warp_speed'" in message
    assert "Traceback" not in message


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("profile = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, cwd=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", cwd=tmp_path)


def test_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_MAX_TRIALS", "lots")
    with pytest.raises(ConfigError, match=r"max_trials: .*integer.*'lots'"):
        load_settings(cwd=tmp_path)


def test_limit_combinations_are_checked_with_the_profile(tmp_path: Path) -> None:
    s = load_settings(cwd=tmp_path, overrides={"limits": {"mem_limit_mb": 100, "output_limit_mb": 200}})
    with pytest.raises(ConfigError, match="output_limit_mb"):
        s.limits_for("tiny")
    ok = load_settings(cwd=tmp_path, overrides={"limits": {"mem_limit_mb": 2048}, "runtime": "runsc"})
    limits = ok.limits_for("tiny")
    assert limits.mem_limit_mb == 2048 and limits.runtime == "runsc"


def test_auto_choices_come_with_their_reason() -> None:
    assert resolve_profile("auto", probe=lambda: (False, "no GPU visible (test)")).value == "tiny"
    gpu = resolve_profile("auto", probe=lambda: (True, "1 GPU(s) visible (H100)"))
    assert (gpu.value, gpu.reason) == ("gpu", "1 GPU(s) visible (H100)")
    assert resolve_profile("tiny", probe=lambda: (True, "")).reason == "set in the configuration"
    assert resolve_agent("auto", env={"ANTHROPIC_API_KEY": "sk-test"}).value == "claude"
    offline = resolve_agent("auto", env={})
    assert offline.value == "offline" and "ANTHROPIC_API_KEY" in offline.reason
    assert default_run_dir("tiny", "offline") == Path("runs/tiny-offline")
