"""progress.png: the run at a glance, after the reference's analysis.

val_bpb per trial in order, keeps highlighted, discards faint, the running best as a step line, plus
the baseline's noise band. Trials without a score are ticks along the bottom edge, and scores far
above the baseline are clipped to the top edge (as triangles) so that one terrible candidate cannot
flatten the plot. The runs of a paired confirmation are small markers at their trial: the
candidate's dots, the best's re-runs rings, so a host that drifted shows as both moving together.
Run canaries (controls, harness/canary.py) are vertical lines, not points. matplotlib is imported
only when a plot is drawn.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.run_view import RunView, shorten
from sandbox.constants import Decision

logger = logging.getLogger(__name__)


def plot_progress(view: RunView, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, state = view.records, view.state
    # Canary rows are controls, not experiments: never plotted as scores, marked as vertical lines.
    scored = [(i, r) for i, r in enumerate(records) if r.val_bpb is not None and r.kind != "canary"]
    fig, ax = plt.subplots(figsize=(14, 6.5), dpi=110)
    try:
        values = [r.val_bpb for _, r in scored if r.val_bpb is not None]
        if values:
            lo = min(values)
            ref = state.noise.mean if state.noise is not None else max(values)
            span = max(ref - lo, 1e-3)
            top = ref + 0.6 * span + (state.noise.threshold if state.noise else 0.0)
            bottom = lo - 0.15 * span
            ax.set_ylim(bottom, top)
            ceiling = top - 0.02 * (top - bottom)  # where scores above the plot are drawn
            groups: dict[Decision, dict[str, Any]] = {
                Decision.DISCARD: dict(color="#9e9e9e", alpha=0.45, s=18, zorder=2, label="discard"),
                Decision.BASELINE: dict(color="#1f77b4", alpha=0.9, s=30, zorder=3, label="baseline"),
                Decision.KEEP: dict(
                    color="#2ca02c",
                    alpha=1.0,
                    s=60,
                    zorder=4,
                    edgecolors="black",
                    linewidths=0.6,
                    label="keep",
                ),
            }
            for decision, style in groups.items():
                pts = [(i, r.val_bpb) for i, r in scored if r.decision is decision and r.val_bpb is not None]
                inside = [(i, v) for i, v in pts if v < top]
                above = [(i, ceiling) for i, v in pts if v >= top]
                if inside:
                    ax.scatter([i for i, _ in inside], [v for _, v in inside], **style)
                if above:
                    ax.scatter(
                        [i for i, _ in above],
                        [v for _, v in above],
                        marker="^",
                        color=style["color"],
                        alpha=style["alpha"],
                        s=20,
                        zorder=2,
                    )
            paired = [
                (i, run.role, run.val_bpb) for i, r in scored for run in r.runs if run.pair and run.val_bpb
            ]
            paired_styles: dict[str, dict[str, Any]] = {
                "candidate": dict(marker=".", color="#555555", s=14, label="confirmation run (paired)"),
                "best": dict(
                    marker="o", facecolors="none", edgecolors="#1f77b4", s=22, label="best re-run (paired)"
                ),
            }
            for role, style in paired_styles.items():
                pts = [(i, v) for i, who, v in paired if who == role and v < top]
                if pts:
                    ax.scatter([i for i, _ in pts], [v for _, v in pts], zorder=2, alpha=0.8, **style)
            crashes = [i for i, r in enumerate(records) if r.val_bpb is None and r.kind != "canary"]
            if crashes:
                ax.scatter(
                    crashes,
                    [bottom + 0.02 * (top - bottom)] * len(crashes),
                    marker="|",
                    color="#d62728",
                    s=60,
                    label="no score (crash, timeout, ...)",
                    zorder=2,
                )
            steps = [(i, s.best.val_bpb) for i, s in enumerate(view.states) if s.best is not None]
            if steps:
                xs = [i for i, _ in steps] + [len(records) - 1]
                ys = [v for _, v in steps] + [steps[-1][1]]
                ax.step(xs, ys, where="post", color="#2ca02c", linewidth=1.6, label="running best", zorder=3)
            if state.noise is not None:
                ax.axhspan(
                    state.noise.mean - state.noise.threshold,
                    state.noise.mean + state.noise.threshold,
                    color="#1f77b4",
                    alpha=0.08,
                    label="baseline ± noise threshold",
                )
            for i, r in scored:
                if r.decision is Decision.KEEP and r.val_bpb is not None:
                    ax.annotate(
                        shorten(r.description, 45),
                        (i, r.val_bpb),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        rotation=-30,
                        color="#1b5e20",
                    )
        for i, r in enumerate(records):
            if r.kind == "canary":
                ok = r.canary is not None and r.canary.passed
                ax.axvline(
                    i,
                    color="#2ca02c" if ok else "#d62728",
                    alpha=0.25 if ok else 0.9,
                    linestyle=":" if ok else "-",
                    linewidth=1.0 if ok else 2.0,
                    label=None if ok else "canary FAILED",
                )
        kept = sum(1 for r in records if r.decision is Decision.KEEP)
        ax.set_title(f"Autoresearch progress: {len(records)} trials, {kept} kept improvements")
        ax.set_xlabel("trial")
        ax.set_ylabel("val_bpb (lower is better)")
        ax.grid(alpha=0.25)
        if records:
            ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
