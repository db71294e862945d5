"""The judge: the harness, not the agent, decides whether a candidate is kept.

Pure functions over numbers plus one small frozen state model, so every rule is unit-testable and a
resumed run can rebuild the state from the ledger alone (`replay`). The rules are deliberately
conservative because nobody watches the run: noise pooled from every repeated run, a bar that never
rises, screening on one run, paired confirmation against the best (drift cancels in each pair's
difference) with a stated false-keep rate, ties favour the shorter file. docs/ARCHITECTURE.md ("The
judge's rules") states them with their formulas; the statistics are in harness/judge_stats.py.
"""

from __future__ import annotations

import io
import logging
import math
import statistics
import tokenize
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from harness.judge_stats import NoiseFloor, pooled_noise, t_quantile
from sandbox.constants import Decision

logger = logging.getLogger(__name__)


class JudgeSettings(BaseModel):
    """How the judge measures noise and what it takes to keep a candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_repeats: int = Field(default=3, ge=1, le=100, description="baseline runs for the noise estimate")
    noise_k: float = Field(
        default=1.0,
        ge=0,
        description="screening: a first run must beat the bar by max(noise_k * s, min_delta)",
    )
    min_delta: float = Field(default=0.0005, ge=0, description="the smallest gain ever counted, in val_bpb")
    confirm_keeps: bool = Field(
        default=True, description="confirm a would-be keep with paired runs of it and the best"
    )
    confirm_pairs: int = Field(
        default=2, ge=1, le=20, description="pairs (candidate, best) run back to back to confirm a keep"
    )
    false_keep_rate: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="the paired test's chance of keeping a candidate no better than the best",
    )
    min_compute_share: float = Field(
        default=0.85,
        ge=0,
        le=1,
        description="a run whose TRAIN got less of its CPUs is `starved`: re-run, never judged (0: off)",
    )

    @property
    def runs_for_keep(self) -> int:
        """Runs of the candidate a keep takes: the first, plus one per confirmation pair."""
        return 1 + self.confirm_pairs if self.confirm_keeps else 1


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
    # Set by the paired confirmation (`judge_paired`): (candidate, best) per pair, and the test's numbers.
    pairs: list[tuple[float, float]] = Field(default_factory=list)
    best_commit: str | None = None  # the best it was judged against (mean_diff is against it)
    paired_with: str | None = None  # the commit its pairs ran against (the best when they ran)
    mean_diff: float | None = None
    paired_threshold: float | None = None
    df: int | None = None
    false_keep_rate: float | None = None

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
        action = Action.CONFIRM
        why = f"would keep ({kind}): {why}; confirming with {settings.confirm_pairs} pair(s) of runs of it and the best"
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


def paired_threshold(
    noise: NoiseFloor, pairs: int, settings: JudgeSettings, via: Sequence[tuple[float, int]] = ()
) -> float:
    """How far below the best the mean paired difference must be: max(t * s * sqrt(2/m), min_delta),
    with `2/m_k` more under the root for each keep in `via` (see `judge_paired`)."""
    if noise.df < 1 or noise.std <= 0:
        return settings.min_delta
    t = t_quantile(1.0 - settings.false_keep_rate, noise.df)
    spread = 2.0 / pairs + sum(2.0 / m for _, m in via)
    return max(t * noise.std * math.sqrt(spread), settings.min_delta)


def judge_paired(
    best: Best,
    noise: NoiseFloor,
    first: float,
    pairs: Sequence[tuple[float, float]],
    lines: int,
    settings: JudgeSettings,
    *,
    paired_with: str | None = None,
    via: Sequence[tuple[float, int]] = (),
) -> Judgement:
    """Judge a would-be keep on its paired runs: (candidate, best) val_bpb, run back to back.

    `paired_with`: the commit the pairs ran against, when the best moved on while they ran (another
    worker's keeps); `via` then holds, for each keep from that commit to `best`, its own mean paired
    difference against its predecessor and its number of pairs. Each is drift-free, so the candidate's
    difference to the current best is `mean(d) - sum(via)`, with variance `2 s^2 (1/m + sum 1/m_k)`.
    """
    if not pairs:
        raise ValueError("judge_paired() needs at least one (candidate, best) pair")
    diffs = [c - b for c, b in pairs]
    mean_d = statistics.fmean(diffs) - sum(d for d, _ in via)
    thr = paired_threshold(noise, len(pairs), settings, via)
    runs = [first, *(c for c, _ in pairs)]
    rate = settings.false_keep_rate if noise.df >= 1 and noise.std > 0 else None
    test = (
        f"t({1 - settings.false_keep_rate:g}, df {noise.df}) x s {noise.std:.6f} x sqrt(2/{len(pairs)}), "
        f"false-keep rate {settings.false_keep_rate:g}"
        if rate is not None
        else "min_delta: no noise estimate yet, no false-keep rate"
    )
    paired = (
        f"paired with the best {best.commit[:7]} over {len(pairs)} pair(s): candidate - best "
        f"{mean_d:+.6f} on average ({', '.join(f'{d:+.6f}' for d in diffs)})"
    )
    if via:
        paired = (
            f"paired with {(paired_with or '?')[:7]} over {len(pairs)} pair(s) "
            f"({', '.join(f'{d:+.6f}' for d in diffs)}), then through the {len(via)} keep(s) that landed "
            f"meanwhile ({', '.join(f'{d:+.6f}' for d, _ in via)}): candidate - best {best.commit[:7]} {mean_d:+.6f}"
        )
    if mean_d < -thr:
        kind, action = Kind.IMPROVEMENT, Action.KEEP
        why = f"{kind}: {paired}, beyond -{thr:.6f} ({test})"
    elif mean_d <= thr and lines < best.code_lines:
        kind, action = Kind.SIMPLIFICATION, Action.KEEP
        why = (
            f"{kind}: {paired}, not detectably worse (within {thr:.6f}, {test}) "
            f"and shorter: {lines} code lines against {best.code_lines}"
        )
    else:
        kind, action = Kind.NO_GAIN, Action.DISCARD
        why = f"not confirmed: {paired}, not beyond -{thr:.6f} ({test})"
        if lines < best.code_lines:
            why += f"; shorter ({lines} lines) but detectably worse than {thr:+.6f}"
    return Judgement(
        action=action,
        kind=kind,
        score=statistics.fmean(runs),
        worst=max(runs),
        bar=best.val_bpb,
        threshold=noise.threshold,
        code_lines=lines,
        best_code_lines=best.code_lines,
        reason=why,
        pairs=[(c, b) for c, b in pairs],
        best_commit=best.commit,
        paired_with=paired_with or best.commit,
        mean_diff=mean_d,
        paired_threshold=thr,
        df=noise.df,
        false_keep_rate=rate,
    )


Measurement = tuple[str, float]  # (the commit that ran, its val_bpb)


class JudgeState(BaseModel):
    """Everything the judge remembers between trials; rebuilt from the ledger on resume."""

    model_config = ConfigDict(frozen=True)

    baseline_scores: tuple[float, ...] = ()
    groups: tuple[tuple[str, tuple[float, ...]], ...] = ()  # every ok run, by the commit that ran
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
        grown = self.with_measurements([(commit, score)], settings)
        if len(scores) < settings.baseline_repeats:
            return grown.model_copy(update={"baseline_scores": scores})
        return grown._closed(scores, trial_id=trial_id, commit=commit, lines=lines, settings=settings)

    def with_measurements(self, measurements: Iterable[Measurement], settings: JudgeSettings) -> JudgeState:
        """Pool more runs into the noise estimate (the baseline's mean and the bar do not move)."""
        groups = {commit: list(values) for commit, values in self.groups}
        for commit, value in measurements:
            groups.setdefault(commit, []).append(value)
        frozen = tuple((commit, tuple(values)) for commit, values in groups.items())
        noise = self.noise
        if noise is not None:
            noise = self._noise(frozen, self.baseline_scores, settings)
        return self.model_copy(update={"groups": frozen, "noise": noise})

    @staticmethod
    def _noise(
        groups: tuple[tuple[str, tuple[float, ...]], ...], baseline: Sequence[float], settings: JudgeSettings
    ) -> NoiseFloor:
        return pooled_noise(
            (values for _, values in groups),
            baseline=baseline,
            noise_k=settings.noise_k,
            min_delta=settings.min_delta,
        )

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
        groups = self.groups or ((commit, scores),)
        noise = self._noise(groups, scores, settings)
        best = Best(trial_id=trial_id, commit=commit, val_bpb=noise.mean, code_lines=lines)
        return JudgeState(baseline_scores=scores, groups=groups, noise=noise, best=best)

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
    measurements: tuple[Measurement, ...] = ()  # every ok run: (the commit that ran, val_bpb)


def replay(rows: Iterable[JudgedRow], settings: JudgeSettings) -> JudgeState:
    """Rebuild the state from recorded rows, trusting the decisions they record (never re-judging).

    The baseline closes at `baseline_repeats` ok runs, or at the first candidate row if a resumed
    run asks for more repeats than were run before candidates started (the recorded decisions were
    made against that baseline).
    """
    state = JudgeState()
    last_baseline: JudgedRow | None = None
    for row in rows:
        if row.kind == "canary":
            continue  # a control: never judged, its runs are no measurement of anything
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
            elif row.decision is Decision.BASELINE:  # landed after the baseline closed: noise only
                state = state.with_measurements(row.measurements, settings)
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
        state = state.with_measurements(row.measurements, settings)
    return state
