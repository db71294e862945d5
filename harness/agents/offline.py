"""OfflineAgent: a hill-climber over train.py's hyperparameter globals. No key, no network.

It is the default agent of `make run` and the baseline LLM agents are measured against, so it tries to
be a sensible researcher within its narrow means:

- It edits only the literals that are in effect for the run's profile (see `knobs.py`), one or two per
  trial, at their exact source span: comments and formatting stay, and the description names exactly
  what changed (`MATRIX_LR 0.04 -> 0.06`).
- Moves suit the kind of knob: learning rates and other scales x/÷ 1.3-2; momenta and betas move
  1 - beta by x/÷ 1.5-2; ratios and fractions step by 0.05-0.2 within [0, 1]; depth ±1; batch sizes and
  power-of-two sizes x/÷ 2; widths by multiples of the head dim (or 64).
- It reads the history: after a keep it tends to push the same knob further the same way; after a
  discard it tends to try the other direction; while an untried alternative exists it never proposes
  a change already in the history, nor the undoing of a kept one, nor a pair that includes a change
  that failed on its own (a batch size the script rejects stays rejected).
- It does not propose a batch size train.py would refuse: train.py asserts that TOTAL_BATCH_SIZE is a
  multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN (`batch_fits`), so a move that breaks this, with the values
  in effect for the profile, is replaced by another. The check is skipped when a batch knob is absent or
  not a literal, or when the current train.py already breaks the rule (no move could keep it).
- Settings that are not hyperparameters (seeds, time reserves, logging intervals, vocab, sequence
  length) are left alone: a shorter export reserve would "win" by timing out, not by learning.

Determinism: `random.Random` seeded by (settings.seed, context seed, trial index): the same run replays
the same proposals; nothing promises the same sequence across versions of this module.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Literal

from harness.agents.base import (
    AgentContext,
    AgentError,
    AgentFatal,
    HistoryRow,
    Proposal,
    Usage,
    raise_if_cancelled,
)
from harness.agents.config import AgentSettings
from harness.agents.knobs import Knob, Number, apply_edits, describe_number, find_knobs, format_number

logger = logging.getLogger(__name__)

MoveKind = Literal["lr", "scale", "momentum", "ratio", "depth", "double", "width", "scale_int", "small_int"]

# Name parts (split on "_") that mark a setting as not a hyperparameter to search.
_FROZEN_PARTS = frozenset(
    {
        "SEED",
        "TIME",
        "BUDGET",
        "S",
        "SEC",
        "SECONDS",
        "EVERY",
        "LOG",
        "EVAL",
        "RESERVE",
        "PEAK",
        "FLOPS",
        "VOCAB",
        "PRINT",
        "VERBOSE",
        "DEBUG",
        "SAVE",
        "CHECKPOINT",
        "PORT",
        "WORKERS",
        "THREADS",
    }
)
_FROZEN_SUBSTRINGS = ("SEQ_LEN", "MAX_SEQ", "CONTEXT_LEN", "BLOCK_SIZE")
_RATIO_PARTS = frozenset({"RATIO", "FRAC", "FRACTION", "DROPOUT", "PROB"})
_MOMENTUM_PARTS = frozenset({"BETA", "BETAS", "MOMENTUM"})
_DEPTH_PARTS = frozenset({"DEPTH", "LAYER", "LAYERS"})
_WIDTH_PARTS = frozenset({"DIM", "EMBD", "EMBED", "WIDTH", "HIDDEN"})
_CHANGE = re.compile(r"(?P<name>\S+) (?P<old>\S+) -> (?P<new>\S+)")

FOLLOW_KEEP_P = 0.6  # after a keep: push the same knob further the same way
REVERSE_DISCARD_P = 0.4  # after a discard: try the same knob the other way
TWO_KNOBS_P = 0.3
MAX_ATTEMPTS = 200
TOTAL_BATCH_KNOB = "TOTAL_BATCH_SIZE"  # tokens per optimizer step
DEVICE_BATCH_KNOB = "DEVICE_BATCH_SIZE"  # rows per forward/backward


def batch_fits(total: Number | None, device: Number | None, max_seq_len: int | None) -> bool:
    """Whether train.py accepts this batch: TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0.

    train.py asserts it before training (gradient accumulation must take a whole number of micro
    steps), so a proposal that breaks it is a trial recorded as a crash. An unknown value (None) means
    the rule cannot be checked, and it is taken to hold.
    """
    if total is None or device is None or max_seq_len is None:
        return True
    micro_step = device * max_seq_len
    return total > 0 and micro_step > 0 and total % micro_step == 0


def profile_max_seq_len(profile: str) -> int | None:
    """The profile's MAX_SEQ_LEN, from the trusted prepare.py; None for a profile it does not define."""
    import prepare  # deferred: it imports torch, which nothing else here needs

    known = prepare.PROFILES.get(profile)
    return known.max_seq_len if known is not None else None


def batch_values(knobs: Sequence[Knob], edits: Mapping[str, Number]) -> tuple[Number | None, Number | None]:
    """(TOTAL_BATCH_SIZE, DEVICE_BATCH_SIZE) in effect once `edits` (knob name -> value) are applied.

    A knob is matched on its hyperparameter name, so a per-profile dict entry counts; a name set by more
    than one literal (which one train.py reads is unknown) or by none is None.
    """
    found: dict[str, list[Number]] = {TOTAL_BATCH_KNOB: [], DEVICE_BATCH_KNOB: []}
    for knob in knobs:
        if knob.key in found and not knob.in_tuple:
            found[knob.key].append(edits.get(knob.name, knob.value))
    totals, devices = found[TOTAL_BATCH_KNOB], found[DEVICE_BATCH_KNOB]
    return (totals[0] if len(totals) == 1 else None, devices[0] if len(devices) == 1 else None)


def classify(knob: Knob) -> MoveKind | None:
    """How `knob` may move, or None if it is not something to search."""
    key, value = knob.key, knob.value
    parts = set(key.split("_"))
    if parts & _FROZEN_PARTS or any(s in key for s in _FROZEN_SUBSTRINGS):
        return None
    if parts & _RATIO_PARTS and 0 <= value <= 1:
        return "ratio"
    if isinstance(value, float):
        if (parts & _MOMENTUM_PARTS or knob.in_tuple) and 0 < value < 1:
            return "momentum"
        if value == 0:
            return None  # a zero has no scale to multiply; nothing sensible to guess
        return "lr" if "LR" in parts or "LEARNING" in parts else "scale"
    if parts & _DEPTH_PARTS:
        return "depth"
    if "BATCH" in parts:
        return "double"
    if parts & _WIDTH_PARTS and "HEAD" not in parts:
        return "width"
    if "ASPECT" in parts:
        return "scale_int"
    if value >= 2 and value & (value - 1) == 0:
        return "double"
    return "scale_int" if value >= 5 else "small_int"


def move(
    knob: Knob, kind: MoveKind, rng: random.Random, direction: int, head_dim: int | None
) -> Number | None:
    """A new value for `knob` in `direction` (+1 up, -1 down), or None if it cannot go that way."""
    v = knob.value
    if kind in ("lr", "scale"):
        factor = rng.choice((1.3, 1.5, 2.0))
        new: Number = float(f"{(v * factor if direction > 0 else v / factor):.3g}")
    elif kind == "momentum":  # move the gap to 1: 0.95 -> 0.975 or 0.9
        factor = rng.choice((1.5, 2.0))
        gap = (1 - v) / factor if direction > 0 else (1 - v) * factor
        new = min(max(1 - gap, 0.0), 0.9999)
        new = round(new, 3 if gap >= 0.01 else 4)
    elif kind == "ratio":
        new = round(min(max(v + direction * rng.choice((0.05, 0.1, 0.2)), 0.0), 1.0), 3)
    elif kind == "depth":
        new = int(v) + direction
    elif kind == "small_int":
        new = int(v) + direction
        if new < 0:
            return None
    elif kind == "double":
        if direction < 0 and int(v) % 2:
            return None
        new = int(v) * 2 if direction > 0 else int(v) // 2
    elif kind == "width":
        step = head_dim if head_dim and v % head_dim == 0 else 64 if v % 64 == 0 else max(1, int(v) // 8)
        new = int(v) + direction * step * rng.choice((1, 2))
        if new < step:
            return None
    else:  # scale_int
        factor = rng.choice((1.25, 1.5, 2.0))
        quantum = 8 if v % 8 == 0 else 1
        new = max(quantum, round((v * factor if direction > 0 else v / factor) / quantum) * quantum)
    if isinstance(v, int) and kind in ("depth", "small_int", "double", "width", "scale_int"):
        new = int(new)
        if new < (0 if kind == "small_int" else 1):
            return None
    return None if describe_number(float(new)) == describe_number(float(v)) else new


def parse_changes(description: str) -> tuple[tuple[str, float, float], ...] | None:
    """`"A 1 -> 2, B 0.5 -> 0.6"` -> ((A, 1, 2), (B, 0.5, 0.6)); None if not in that form."""
    changes = []
    for part in description.split(", "):
        match = _CHANGE.fullmatch(part.strip())
        if match is None:
            return None
        try:
            changes.append((match["name"], float(match["old"]), float(match["new"])))
        except ValueError:
            return None
    return tuple(changes) or None


def _key(changes: Sequence[tuple[str, float, float]]) -> frozenset[tuple[str, float, float]]:
    return frozenset((name, float(f"{old:.4g}"), float(f"{new:.4g}")) for name, old, new in changes)


def _tried(history: Sequence[HistoryRow]) -> set[frozenset[tuple[str, float, float]]]:
    """Proposals not to make again: every one in the history, and the undoing of every keep."""
    tried = set()
    for row in history:
        changes = parse_changes(row.description)
        if changes is None:
            continue
        tried.add(_key(changes))
        if row.decision == "keep":
            tried.add(_key([(name, new, old) for name, old, new in changes]))
    return tried


def _doomed(history: Sequence[HistoryRow]) -> set[tuple[str, float, float]]:
    """Single changes that failed on their own (crash, timeout, oom...): not worth pairing with another."""
    doomed: set[tuple[str, float, float]] = set()
    for row in history:
        changes = parse_changes(row.description)
        if row.status != "ok" and changes is not None and len(changes) == 1:
            doomed |= _key(changes)
    return doomed


class OfflineAgent:
    """Mutates one or two hyperparameter literals of the current best train.py per trial."""

    name = "offline"

    def __init__(self, settings: AgentSettings | None = None) -> None:
        self.settings = settings or AgentSettings()

    def propose(self, ctx: AgentContext, cancel: threading.Event | None = None) -> Proposal:
        raise_if_cancelled(cancel, f"the proposal for trial {ctx.trial_index}")
        try:
            found = find_knobs(ctx.train_py, ctx.profile)
        except SyntaxError as exc:
            raise AgentError(f"the current best train.py does not parse ({exc}); nothing to mutate") from exc
        knobs = [k for k in found if classify(k) is not None]
        if not knobs:
            raise AgentFatal(
                "OfflineAgent found no numeric UPPER_CASE hyperparameter globals in effect for profile "
                f"{ctx.profile!r} in train.py; it has nothing to tune (use --agent claude or replay)"
            )
        rng = random.Random(f"offline:{self.settings.seed}:{ctx.seed}:{ctx.trial_index}")
        tried, doomed = _tried(ctx.history), _doomed(ctx.history)
        head_dim = next(
            (int(k.value) for k in knobs if k.key == "HEAD_DIM" and isinstance(k.value, int)), None
        )
        before = {k.name: k.value for k in found}
        max_seq_len = profile_max_seq_len(ctx.profile)
        # guard the rule only while it holds: on a train.py that already breaks it, it would refuse every move
        guard_batch = batch_fits(*batch_values(found, {}), max_seq_len)
        fallback: list[tuple[Knob, Number]] = []
        for plan in self._plans(knobs, ctx.history, rng):
            edits = []
            for knob, direction in plan:
                kind = classify(knob)
                assert kind is not None  # knobs were filtered on it
                new = move(knob, kind, rng, direction, head_dim)
                if new is not None:
                    edits.append((knob, new))
            if not edits:
                continue
            if guard_batch and not batch_fits(
                *batch_values(found, {knob.name: new for knob, new in edits}), max_seq_len
            ):
                logger.debug("skipping %s: train.py would refuse the batch size", edits)
                continue
            key = _key([(knob.name, knob.value, new) for knob, new in edits])
            if key in tried or key & doomed:
                fallback = fallback or edits
                continue
            proposal = self._build(ctx, before, edits)
            if proposal is not None:
                logger.info("offline proposal for trial %d: %s", ctx.trial_index, proposal.description)
                return proposal
        proposal = self._build(ctx, before, fallback) if fallback else None
        if proposal is None:
            raise AgentError("OfflineAgent could not build any valid mutation of train.py")
        logger.warning("every mutation drawn was already tried; proposing %s again", proposal.description)
        return proposal

    def _plans(
        self, knobs: Sequence[Knob], history: Sequence[HistoryRow], rng: random.Random
    ) -> list[list[tuple[Knob, int]]]:
        """Candidate plans, best first: [(knob, direction)], one or two knobs each."""
        plans: list[list[tuple[Knob, int]]] = []
        last = parse_changes(history[-1].description) if history else None
        if last is not None and len(last) == 1:
            (name, old, new), decision = last[0], history[-1].decision
            knob = next((k for k in knobs if k.name == name), None)
            direction = 1 if new > old else -1
            # descriptions carry 4 significant digits: compare at that precision
            if knob and decision == "keep" and math.isclose(knob.value, new, rel_tol=1e-3):
                if rng.random() < FOLLOW_KEEP_P:
                    plans.append([(knob, direction)])
            elif knob and decision == "discard" and math.isclose(knob.value, old, rel_tol=1e-3):
                if rng.random() < REVERSE_DISCARD_P:
                    plans.append([(knob, -direction)])
        for _ in range(MAX_ATTEMPTS):
            count = 2 if len(knobs) > 1 and rng.random() < TWO_KNOBS_P else 1
            plans.append([(knob, rng.choice((-1, 1))) for knob in rng.sample(list(knobs), count)])
        return plans

    def _build(
        self, ctx: AgentContext, before: dict[str, Number], edits: Sequence[tuple[Knob, Number]]
    ) -> Proposal | None:
        """The edited source, checked by re-reading it: exactly the edited knobs changed, as intended."""
        source = apply_edits(ctx.train_py, [(knob, format_number(new, knob.text)) for knob, new in edits])
        try:
            after = {k.name: k.value for k in find_knobs(source, ctx.profile)}
        except SyntaxError:
            logger.error("a mutation produced unparsable source; skipping it: %s", edits)
            return None
        changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
        if changed != {knob.name for knob, _ in edits}:
            logger.error(
                "a mutation changed %s instead of %s; skipping it", changed, [k.name for k, _ in edits]
            )
            return None
        parts = [
            f"{knob.name} {describe_number(knob.value)} -> {describe_number(after[knob.name])}"
            for knob, _ in sorted(edits, key=lambda edit: edit[0].start)
        ]
        return Proposal(train_py=source, description=", ".join(parts), usage=Usage(model="offline"))
