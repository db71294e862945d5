"""The agents' settings: one frozen model the loop's config embeds (`agent:` section).

Deliberate choices:
- No API key here. The key comes from the environment (`ANTHROPIC_API_KEY`), so a config file can be
  committed, printed and copied into a run folder without leaking it.
- Prices are a table keyed by model id, in USD per million tokens, with the 5-minute cache-write and
  cache-read rates, so the cost recorded per trial is computed from the tokens the API reported, not
  estimated. Prices given in the config are added to (and override) the built-in rows. A model missing
  from the table is still usable: its cost is recorded as 0 with a warning.
  A dated snapshot id (`claude-sonnet-4-5-20250929`) is priced as its alias (`claude-sonnet-4-5`);
  nothing is matched by looser prefixes, because `claude-opus-4` and `claude-opus-4-5` differ threefold.
  The built-in table is dated (`DEFAULT_PRICES_AS_OF`); the report prints the date with the cost.
- Caps per proposal (`max_cost_usd_per_proposal`, `max_tokens_per_proposal`) are checked after every
  API call of a proposal (a program-evolution meta-proposal included); reaching one abandons the
  proposal and stops the run (AgentCapReached). The run's own cap, `max_cost_usd`, is the loop's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AgentKind = Literal["claude", "offline", "replay"]
AGENT_KINDS: tuple[str, ...] = ("claude", "offline", "replay")

DEFAULT_MODEL = "claude-sonnet-4-6"


class ModelPrice(BaseModel):
    """USD per million tokens for one model (standard tier, prompts under the long-context threshold)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(ge=0, description="5-minute cache writes")
    cache_read: float = Field(ge=0, description="cache hits and refreshes")


def _price(inp: float, out: float) -> ModelPrice:
    # Anthropic's published multipliers: 5-minute cache writes 1.25x input, cache hits 0.1x input.
    return ModelPrice(input=inp, output=out, cache_write=inp * 1.25, cache_read=inp * 0.1)


# From Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing), as of the date
# below. Add or override rows in the config (`[agent_settings.prices]`) rather than editing this table.
DEFAULT_PRICES_AS_OF = "2026-11-30"
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "claude-opus-5": _price(5.0, 25.0),
    "claude-opus-4-8": _price(5.0, 25.0),
    "claude-opus-4-7": _price(5.0, 25.0),
    "claude-opus-4-6": _price(5.0, 25.0),
    "claude-opus-4-5": _price(5.0, 25.0),
    "claude-opus-4-1": _price(15.0, 75.0),
    "claude-opus-4": _price(15.0, 75.0),
    "claude-sonnet-4-6": _price(3.0, 15.0),
    "claude-sonnet-4-5": _price(3.0, 15.0),
    "claude-sonnet-4": _price(3.0, 15.0),
    "claude-haiku-4-5": _price(1.0, 5.0),
}

_SNAPSHOT = re.compile(r"(?P<alias>.+)-\d{8}")


class AgentSettings(BaseModel):
    """Everything that configures an agent. `kind` is the default; `make_agent(name, ...)` may override it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AgentKind = "offline"
    seed: int = 0

    # Claude
    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    max_tokens: int = Field(default=16_000, ge=256, le=64_000, description="per API call")
    max_edit_turns: int = Field(default=12, ge=1, le=100, description="API calls per proposal")
    history_rows: int | None = Field(
        default=None, ge=0, description="most recent trials shown to the model; None: the whole run"
    )
    history_tokens: int = Field(
        default=6_000,
        ge=200,
        description="cap on the history table's size (estimated tokens); the oldest discards are "
        "summarized first",
    )
    max_cost_usd_per_proposal: float | None = Field(
        default=None, gt=0, description="stop the run when one proposal's API calls cost more; None: no cap"
    )
    max_tokens_per_proposal: int | None = Field(
        default=None,
        gt=0,
        description="stop the run when one proposal's API calls use more tokens (input, output, cache "
        "writes and reads); None: no cap",
    )
    api_base_url: str | None = Field(
        default=None, description="e.g. a local test server; None: the SDK default"
    )
    timeout_s: float = Field(default=600.0, gt=0, description="per API request")
    retry_attempts: int = Field(default=8, ge=1, le=50, description="tries per API call, the first included")
    retry_base_s: float = Field(default=2.0, ge=0, description="first backoff wait; doubles per retry")
    retry_max_wait_s: float = Field(default=60.0, ge=0, description="cap on one wait, retry-after included")
    prices: Mapping[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    # Replay
    replay_dir: Path | None = None

    @field_validator("prices", mode="before")
    @classmethod
    def _add_to_the_defaults(cls, value: Any) -> Any:
        # A config naming one new model should not silently drop the prices of all the others.
        return {**DEFAULT_PRICES, **value} if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _replay_needs_a_folder(self) -> AgentSettings:
        if self.kind == "replay" and self.replay_dir is None:
            raise ValueError("agent kind 'replay' needs replay_dir (a folder of train.py files)")
        return self

    def price_for(self, model: str) -> ModelPrice | None:
        """The price row for `model`, or for its alias when `model` is a dated snapshot; None if unknown."""
        if model in self.prices:
            return self.prices[model]
        match = _SNAPSHOT.fullmatch(model)
        return self.prices.get(match["alias"]) if match else None
