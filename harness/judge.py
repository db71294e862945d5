"""The judge: the harness, not the agent, decides whether a candidate is kept.

Pure functions over numbers plus one small frozen state model, so every rule is unit-testable and a
resumed run can rebuild the state from the ledger alone.

The rules, deliberately conservative because nobody watches the run:

- **Noise floor.** The starting train.py is run `baseline_repeats` times with different seeds. The
  threshold is `max(noise_k * std, min_delta)`, where std is the sample standard deviation of those
  val_bpb values (with one baseline run there is no estimate and `min_delta` alone applies).
- **The bar.** It starts at the mean of the baseline runs (comparing against the luckiest run would
  make the baseline itself unbeatable half the time). After a keep it becomes
  `min(bar, score of the kept candidate)`: the bar never rises, so a chain of "equal but shorter"
  keeps cannot drift the score upwards a threshold at a time.
- **Improvement.** A candidate is an improvement when its *worst* run beats the bar by more than
  the threshold: `worst < bar - threshold`.
- **Confirmation.** With `confirm_keeps`, a would-be keep is run again with another seed before it
  is accepted, and the rule above is applied to the worse of the two runs (not their mean): both
  runs must clear the bar on their own, so a single lucky seed is never enough. The recorded score
  is the mean of the runs, the best estimate of the candidate's value.
- **Ties favour the shorter file.** Within the noise (`worst <= bar + threshold`), a train.py with
  fewer code lines (non-blank, non-comment) than the current best is kept as a simplification;
  it is confirmed like any other keep.
"""

from __future__ import annotations

import io
import logging
import statistics
import tokenize
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from sandbox.constants import Decision

logger = logging.getLogger(__name__)


class JudgeSettings(BaseModel):
    """How the judge measures noise and what it takes to keep a candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_repeats: int = Field(default=3, ge=1, le=100, description="baseline runs for the noise estimate")
    noise_k: float = Field(default=2.0, ge=0, description="threshold = max(noise_k * std, min_delta)")
    min_delta: float = Field(default=0.0005, ge=0, description="the smallest gain ever counted, in val_bpb")
    confirm_keeps: bool = Field(default=True, description="re-run a would-be keep with another seed")
    min_compute_share: float = Field(
        default=0.85,
        ge=0,
        le=1,
        description="a run whose TRAIN got less of its CPUs is `starved`: re-run, never judged (0: off)",
    )

    @property
    def runs_for_keep(self) -> int:
        return 2 if self.confirm_keeps else 1


class NoiseFloor(BaseModel):
    """What the baseline runs say about run-to-run noise."""

    model_config = ConfigDict(frozen=True)

    n: int
    mean: float
    std: float
    threshold: float


def noise_floor(values: Sequence[float], *, noise_k: float, min_delta: float) -> NoiseFloor:
    """The noise floor from repeated runs of one train.py with different seeds."""
    if not values:
        raise ValueError("the noise floor needs at least one baseline run")
    std = statistics.stdev(values) if len(values) >= 2 else 0.0
    return NoiseFloor(
        n=len(values),
        mean=statistics.fmean(values),
        std=std,
        threshold=max(noise_k * std, min_delta),
    )


_NON_CODE = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
)


def code_lines(source: str) -> int:
    """Lines holding code: not blank and not only a comment (docstrings count: they are code).

    Uses the tokenizer, so a `#` inside a string is not mistaken for a comment. Text that does not
    tokenize (it will not be run anyway) falls back to a plain line filter.
    """
    lines: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in _NON_CODE:
                lines.update(range(tok.start[0], tok.end[0] + 1))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))
    return len(lines)


class Best(BaseModel):
    """The current best train.py: its commit, its line count, and the bar candidates must beat."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    commit: str
    val_bpb: float  # the bar: never rises (see the module docstring)
    code_lines: int


class Kind(StrEnum):
    IMPROVEMENT = "improvement"
    SIMPLIFICATION = "simplification"
    NO_GAIN = "no gain"


class Action(StrEnum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # a would-be keep: run it again with another seed, then judge all runs


class Judgement(BaseModel):
    """The judge's answer for one candidate, with the numbers it used (recorded in the ledger)."""

    model_config = ConfigDict(frozen=True)

    action: Action
    kind: Kind
    score: float  # mean of the runs: the candidate's recorded val_bpb
    worst: float  # the run compared with the bar
    bar: float
    threshold: float
    code_lines: int
    best_code_lines: int
    reason: str

    @property
    def decision(self) -> Decision:
        if self.action is Action.CONFIRM:
            raise ValueError("a judgement that asks for confirmation has no decision yet")
        return Decision.KEEP if self.action is Action.KEEP else Decision.DISCARD


def judge(
    best: Best, noise: NoiseFloor, scores: Sequence[float], lines: int, settings: JudgeSettings
) -> Judgement:
    """Judge a candidate from the val_bpb of its runs so far (each run with a different seed)."""
    if not scores:
        raise ValueError("judge() needs the val_bpb of at least one run")
    worst = max(scores)
    score = statistics.fmean(scores)
    bar, thr = best.val_bpb, noise.threshold
    runs = "both runs" if len(scores) == 2 else f"all {len(scores)} runs" if len(scores) > 2 else "the run"
    if worst < bar - thr:
        kind = Kind.IMPROVEMENT
        why = f"{runs} beat the bar {bar:.6f} by more than the noise threshold {thr:.6f} (worst {worst:.6f})"
    elif worst <= bar + thr and lines < best.code_lines:
        kind = Kind.SIMPLIFICATION
        why = (
            f"within the noise of the bar {bar:.6f} (±{thr:.6f}, worst {worst:.6f}) "
            f"and shorter: {lines} code lines against {best.code_lines}"
        )
    else:
        if worst <= bar + thr:
            why = (
                f"within the noise of the bar {bar:.6f} (±{thr:.6f}, worst {worst:.6f}) "
                f"but not shorter: {lines} code lines against {best.code_lines}"
            )
        else:
            why = (
                f"worse than the bar {bar:.6f} by more than the noise threshold {thr:.6f} (worst {worst:.6f})"
            )
        if len(scores) > 1:
            why = f"not confirmed: {why}"
        return Judgement(
            action=Action.DISCARD,
            kind=Kind.NO_GAIN,
            score=score,
            worst=worst,
            bar=bar,
            threshold=thr,
            code_lines=lines,
            best_code_lines=best.code_lines,
            reason=why,
        )
    if len(scores) < settings.runs_for_keep:
        action, why = Action.CONFIRM, f"would keep ({kind}): {why}; confirming with another seed"
    else:
        action = Action.KEEP
        why = f"{kind}: {why}"
    return Judgement(
        action=action,
        kind=kind,
        score=score,
        worst=worst,
        bar=bar,
        threshold=thr,
        code_lines=lines,
        best_code_lines=best.code_lines,
        reason=why,
    )


class JudgeState(BaseModel):
    """Everything the judge remembers between trials; rebuilt from the ledger on resume."""

    model_config = ConfigDict(frozen=True)

    baseline_scores: tuple[float, ...] = ()
    noise: NoiseFloor | None = None
    best: Best | None = None

    @property
    def ready(self) -> bool:
        """True once the baseline runs are complete and candidates can be judged."""
        return self.noise is not None and self.best is not None

    def with_baseline(
        self, score: float, *, trial_id: str, commit: str, lines: int, settings: JudgeSettings
    ) -> JudgeState:
        """Add one baseline run; the noise floor and the bar are set when the last one arrives."""
        if self.ready:
            raise ValueError("the baseline is already complete")
        scores = (*self.baseline_scores, score)
        if len(scores) < settings.baseline_repeats:
            return self.model_copy(update={"baseline_scores": scores})
        return self._closed(scores, trial_id=trial_id, commit=commit, lines=lines, settings=settings)

    def close_baseline(
        self, *, trial_id: str, commit: str, lines: int, settings: JudgeSettings
    ) -> JudgeState:
        """Close the baseline with the runs there are (a resumed run whose repeats setting went down)."""
        return self._closed(
            self.baseline_scores, trial_id=trial_id, commit=commit, lines=lines, settings=settings
        )

    def _closed(
        self, scores: tuple[float, ...], *, trial_id: str, commit: str, lines: int, settings: JudgeSettings
    ) -> JudgeState:
        noise = noise_floor(scores, noise_k=settings.noise_k, min_delta=settings.min_delta)
        best = Best(trial_id=trial_id, commit=commit, val_bpb=noise.mean, code_lines=lines)
        return JudgeState(baseline_scores=scores, noise=noise, best=best)

    def after_keep(self, judgement: Judgement, *, trial_id: str, commit: str) -> JudgeState:
        """The state once a kept candidate becomes the best."""
        if self.best is None or judgement.action is not Action.KEEP:
            raise ValueError("after_keep() needs a complete baseline and a keep")
        best = Best(
            trial_id=trial_id,
            commit=commit,
            val_bpb=min(self.best.val_bpb, judgement.score),
            code_lines=judgement.code_lines,
        )
        return self.model_copy(update={"best": best})


class JudgedRow(BaseModel):
    """The few facts of a ledger row the judge's state depends on."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    kind: str  # "baseline" | "candidate"
    decision: Decision
    val_bpb: float | None
    candidate_commit: str
    code_lines: int


def replay(rows: Iterable[JudgedRow], settings: JudgeSettings) -> JudgeState:
    """Rebuild the state from recorded rows, trusting the decisions they record (never re-judging).

    The baseline closes at `baseline_repeats` ok runs, or at the first candidate row if a resumed
    run asks for more repeats than were run before candidates started (the recorded decisions were
    made against that baseline).
    """
    state = JudgeState()
    last_baseline: JudgedRow | None = None
    for row in rows:
        if row.kind == "baseline":
            if row.decision is Decision.BASELINE and row.val_bpb is not None and not state.ready:
                state = state.with_baseline(
                    row.val_bpb,
                    trial_id=row.trial_id,
                    commit=row.candidate_commit,
                    lines=row.code_lines,
                    settings=settings,
                )
                last_baseline = row
            continue
        if not state.ready and last_baseline is not None:
            state = state.close_baseline(
                trial_id=last_baseline.trial_id,
                commit=last_baseline.candidate_commit,
                lines=last_baseline.code_lines,
                settings=settings,
            )
        if row.decision is Decision.KEEP and state.best is not None and row.val_bpb is not None:
            best = Best(
                trial_id=row.trial_id,
                commit=row.candidate_commit,
                val_bpb=min(state.best.val_bpb, row.val_bpb),
                code_lines=row.code_lines,
            )
            state = state.model_copy(update={"best": best})
    return state
