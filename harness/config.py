"""The research loop's configuration: one frozen settings object, and the layout of a run folder.

Sources, highest priority first: command-line flags (passed as overrides), the environment
(`AUTORESEARCH_<FIELD>`, nested with `__`: `AUTORESEARCH_JUDGE__NOISE_K=3`), a TOML file
(`--config F`, else `./autoresearch.toml` when present), then the defaults below, which work on a
fresh machine. An example file: docs/ARCHITECTURE.md ("Measurements and history", harness/config.py).

Deliberate properties:
- Unknown keys in the file are errors (a typo must not silently fall back to a default), and every
  error names the key and the reason: `load_settings` turns pydantic's ValidationError into a
  `ConfigError` with one line per problem.
- Environment variables that are not fields are ignored: `AUTORESEARCH_DATA`, `AUTORESEARCH_OUT`
  and `AUTORESEARCH_SEED` also exist for prepare.py and train.py, and the controller must not trip
  over them.
- "auto" choices are resolved in one place (`resolve_profile`, `resolve_agent`), each with the
  reason, which the `run` banner prints.
- `limits` holds overrides of `sandbox.engine.limits.Limits` fields; each value is checked against the
  field's own constraints at load time, the combination when the profile is known.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from harness.agents.config import AgentSettings
from harness.judge import JudgeSettings
from sandbox import constants as C
from sandbox.engine.limits import Limits

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = Path("autoresearch.toml")
ENV_PREFIX = "AUTORESEARCH_"
RUN_TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

DEFAULT_CANARY_INTERVAL = 10
ProfileChoice = Literal["tiny", "gpu", "auto"]
AgentChoice = Literal["claude", "offline", "replay", "auto"]


class ConfigError(Exception):
    """The configuration is broken; the message names each bad key and why."""


class RetrySettings(BaseModel):
    """Bounded retries: failures that are nobody's verdict never loop forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sandbox_attempts: int = Field(default=3, ge=1, le=20, description="tries of a trial on SandboxError")
    sandbox_backoff_s: float = Field(default=10.0, ge=0, description="first wait; doubles per retry")
    agent_attempts: int = Field(default=3, ge=1, le=20, description="tries of propose() on AgentError")
    agent_backoff_s: float = Field(default=5.0, ge=0)
    trial_starts: int = Field(
        default=3, ge=1, le=10, description="starts of one trial (resumes included) before it is abandoned"
    )
    invalid_streak: int = Field(
        default=20, ge=1, description="proposals in a row that do not parse or change nothing before stopping"
    )
    starved_attempts: int = Field(
        default=5, ge=1, le=50, description="starved runs of one trial in a row before the run pauses"
    )
    starved_backoff_s: float = Field(
        default=30.0, ge=0, description="wait after a starved run; doubles per attempt, at most 10 minutes"
    )


_LIMIT_FIELDS = Limits.model_fields


def _check_limit_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in values.items():
        field = _LIMIT_FIELDS.get(key)
        if field is None:
            problems.append(f"unknown limit {key!r} (known: {', '.join(sorted(_LIMIT_FIELDS))})")
            continue
        try:
            checked[key] = TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
        except ValidationError as exc:
            problems.append(f"{key}: {exc.errors()[0]['msg']} (got {value!r})")
    if problems:
        raise ValueError("; ".join(problems))
    return checked


_toml_path: ContextVar[Path | None] = ContextVar("autoresearch_toml_path", default=None)


class Settings(BaseSettings):
    """Everything `harness run` can be told. Frozen; build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    profile: ProfileChoice = Field(default="auto", description="auto: gpu if a GPU is visible, else tiny")
    agent: AgentChoice = Field(
        default="auto", description="auto: claude if ANTHROPIC_API_KEY is set, else offline"
    )
    replay_dir: Path | None = Field(default=None, description="folder of train.py files for the replay agent")
    max_trials: int | None = Field(
        default=None, ge=0, description="candidate trials in the run folder; None: forever"
    )
    run_dir: Path | None = Field(default=None, description="None: runs/<profile>-<agent>")
    run_tag: str | None = Field(
        default=None, pattern=RUN_TAG_PATTERN, description="None: the run folder's name"
    )
    data_dir: Path | None = Field(default=None, description="None: prepare.py's default for the profile")
    program: Path = Field(default=Path("program.md"), description="the human's instructions to the agent")
    train_py: Path = Field(
        default=Path("train.py"), description="the starting train.py (read at a run's first start)"
    )
    backend: Literal["docker", "local"] = Field(
        default="docker", description="local isolates nothing: tests only"
    )
    runtime: Literal["runc", "runsc"] | None = Field(default=None, description="None: the engine's default")
    gpu_ids: tuple[str, ...] = Field(
        default=(), description="devices for every trial (gpu); empty: one lease"
    )
    seed: int = Field(
        default=0, description="base seed; every run's seed is derived from it and the trial id"
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="trials at once, each on its own lease (a GPU, else a cpuset)"
    )
    canary_interval: int | None = Field(
        default=None,
        ge=0,
        description="candidate trials between canaries (a known cheat that must be rejected; one also "
        "runs right after the baseline); 0: off, with a warning; None: "
        f"{DEFAULT_CANARY_INTERVAL} on docker, off on local (which isolates nothing)",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="stop the run (exit 9) once the agent has cost this much in USD; resume with a higher "
        "cap. Per-proposal caps are agent_settings.max_cost_usd_per_proposal and max_tokens_per_proposal",
    )
    program_evolution_every: int = Field(
        default=0,
        ge=0,
        description="every N candidate trials, let the agent rewrite program.md's research-guidance "
        "section (harness/program.py); 0: off, program.md stays as written",
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    limits: dict[str, Any] = Field(
        default_factory=dict, description="overrides of sandbox.engine.limits.Limits"
    )
    agent_settings: AgentSettings = Field(default_factory=lambda: AgentSettings.model_validate({}))

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return _check_limit_overrides(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def limits_for(self, profile: str) -> Limits:
        """The trial limits for a profile: its defaults, the overrides, then `runtime`."""
        overrides = dict(self.limits)
        if self.runtime is not None:
            overrides["runtime"] = self.runtime
        try:
            return Limits.for_profile(profile, **overrides)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix="limits.")) from None


def format_validation_error(exc: ValidationError, *, prefix: str = "", source: str = "") -> str:
    """One line per problem: `key: why (got value)`."""
    lines = []
    for err in exc.errors():
        loc = (
            prefix + ".".join(str(part) for part in err["loc"])
            if err["loc"]
            else prefix.rstrip(".") or "config"
        )
        got = (
            f" (got {err['input']!r})"
            if err["type"] not in {"missing"} and not isinstance(err["input"], dict)
            else ""
        )
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}{got}")
    where = f" in {source}" if source else ""
    return f"invalid configuration{where}:\n" + "\n".join(lines)


def load_settings(
    config: Path | None = None, overrides: Mapping[str, Any] | None = None, *, cwd: Path | None = None
) -> Settings:
    """Settings from flags (`overrides`, None values ignored), the environment and the TOML file.

    `config` must exist when given; without it `./autoresearch.toml` is read when present.
    """
    cwd = cwd or Path.cwd()
    path: Path | None
    if config is not None:
        path = config if config.is_absolute() else cwd / config
        if not path.is_file():
            raise ConfigError(f"config file {config} not found")
    else:
        default = cwd / DEFAULT_CONFIG_FILE
        path = default if default.is_file() else None
    if path is not None:
        try:
            with path.open("rb") as f:
                tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    init = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _toml_path.set(path)
    try:
        return Settings(**init)
    except ValidationError as exc:
        sources = [str(path)] if path else []
        sources.append(f"{ENV_PREFIX}* environment variables")
        if init:
            sources.append("command-line flags")
        raise ConfigError(format_validation_error(exc, source=" / ".join(sources))) from None
    finally:
        _toml_path.reset(token)


# --------------------------------------------------------------------------- "auto", resolved


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.value}: {self.reason}"


def gpu_visible() -> tuple[bool, str]:
    """Whether the driver reports a GPU (NVML, else nvidia-smi; never a guess), and what it reported."""
    from sandbox.engine.gpu import discover_gpus

    gpus = discover_gpus()
    if not gpus:
        return False, "no GPU visible (neither NVML nor nvidia-smi reports one)"
    return True, f"{len(gpus)} GPU(s) visible ({gpus[0].name})"


def resolve_profile(setting: str, *, probe: Callable[[], tuple[bool, str]] = gpu_visible) -> Choice:
    if setting != "auto":
        return Choice(setting, "set in the configuration")
    visible, why = probe()
    return Choice("gpu" if visible else "tiny", why)


def resolve_agent(setting: str, *, env: Mapping[str, str] | None = None) -> Choice:
    if setting != "auto":
        return Choice(setting, "set in the configuration")
    env = os.environ if env is None else env
    if env.get("ANTHROPIC_API_KEY"):
        return Choice("claude", "ANTHROPIC_API_KEY is set")
    return Choice("offline", "ANTHROPIC_API_KEY is not set (the offline agent needs no key)")


def resolve_canary_interval(setting: int | None, backend: str) -> tuple[int, str]:
    """Candidate trials between canaries (0: off), and why."""
    if setting is not None:
        return setting, "set in the configuration"
    if backend == "local":
        return 0, "the local backend isolates nothing, so a canary would always escape"
    return DEFAULT_CANARY_INTERVAL, "the default"


def default_run_dir(profile: str, agent: str) -> Path:
    """runs/<profile>-<agent>, relative to the working directory."""
    return Path("runs") / f"{profile}-{agent}"


def agent_settings_for(settings: Settings, agent: str) -> AgentSettings:
    """The agent settings with the resolved kind and the replay folder from the flags."""
    data = settings.agent_settings.model_dump()
    data["kind"] = agent
    if settings.replay_dir is not None:
        data["replay_dir"] = settings.replay_dir
    try:
        return AgentSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="agent_settings.")) from None


# --------------------------------------------------------------------------- resolved


class RunConfig(BaseModel):
    """A run's fully resolved settings (no "auto" left): what the loop needs and nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_dir: Path
    run_tag: str
    profile: Literal["tiny", "gpu"]
    agent: str
    backend: str
    program: Path
    train_py: Path
    limits: Limits
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    max_trials: int | None = None
    seed: int = 0
    gpu_ids: tuple[str, ...] = ()
    # Candidate trials between canaries (harness/canary.py); 0: none. `python -m harness run` resolves it
    # with `resolve_canary_interval` (10 on docker); a RunConfig built by hand runs no canary unless asked.
    canary_interval: int = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=1, le=64)
    max_cost_usd: float | None = Field(default=None, gt=0)  # the run's agent cost cap (None: none)
    program_evolution_every: int = Field(default=0, ge=0)  # 0: program.md stays as the human wrote it


# --------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class TrialPaths:
    """Files of one trial folder (`run_dir/trials/<trial_id>/`)."""

    dir: Path

    @property
    def candidate(self) -> Path:
        return self.dir / C.CANDIDATE_FILE

    @property
    def diff(self) -> Path:
        return self.dir / "parent.diff"

    @property
    def trial_json(self) -> Path:
        return self.dir / "trial.json"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def controller_log(self) -> Path:
        return self.dir / "controller.log"

    @property
    def starts(self) -> Path:
        return self.dir / "starts.jsonl"

    @property
    def confirm_dir(self) -> Path:
        return self.dir / "confirm"

    @property
    def interrupted_dir(self) -> Path:
        return self.dir / "interrupted"

    @property
    def paired_best(self) -> Path:
        """The best's train.py, as the paired confirmation runs it beside the candidate."""
        return self.dir / "best.train.py"

    @property
    def starved_dir(self) -> Path:
        """Runs the host starved (sandbox/compute.py), kept as they were, one folder per attempt."""
        return self.dir / "starved"

    def run_dir(self, run: int) -> Path:
        """Where the sandbox writes run `run`: the trial folder itself, the confirmation beside it."""
        return self.dir if run == 0 else self.confirm_dir if run == 1 else self.dir / f"run-{run}"

    @property
    def own_files(self) -> frozenset[str]:
        """Names the controller writes (everything else in the folder is the sandbox's)."""
        return frozenset(
            p.name
            for p in (
                self.candidate,
                self.diff,
                self.trial_json,
                self.manifest,
                self.controller_log,
                self.starts,
                self.paired_best,
            )
        ) | {self.interrupted_dir.name, self.starved_dir.name}


@dataclass(frozen=True)
class RunPaths:
    """The layout of a run folder; everything a run writes is under `root`."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def results(self) -> Path:
        return self.root / "results.tsv"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def lineage(self) -> Path:
        return self.root / "lineage"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def owner(self) -> Path:
        return self.root / "run.owner"

    @property
    def log(self) -> Path:
        return self.root / "controller.log"

    @property
    def progress_png(self) -> Path:
        return self.root / "progress.png"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def notes(self) -> Path:
        """Each version of the agent's notes, as notes/<trial_id>.md (the trial it was written for)."""
        return self.root / "notes"

    @property
    def programs(self) -> Path:
        """Each evolved program.md and its diff, as programs/<program_id>.md and .diff."""
        return self.root / "programs"

    def trial(self, trial_id: str) -> TrialPaths:
        return TrialPaths(self.trials / trial_id)
