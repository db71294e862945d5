"""What a researcher reads in the morning: the status line, progress.png and report.md.

Everything here reads a run folder and writes nothing but `progress.png` and `report.md`; the
numbers come from the ledger (verified first: the report says so when it does not verify), the
diffs and logs from the trial folders.

progress.png is drawn by harness/report_plot.py; one trial's logs are harness/trial_logs.py's.

report.md also shows what the agent cost (every ledger row's usage: trials, program-evolution steps and
proposals that produced no trial), how its research notes evolved (each version in notes/, as a diff
against the one before), and each program.md edit of the opt-in program evolution (its diff).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from harness.agents.config import DEFAULT_PRICES_AS_OF
from harness.config import RunPaths
from harness.judge import JudgeSettings
from harness.records.schemas import TrialRecord
from harness.report_plot import plot_progress
from harness.run_view import RunView, load_run, shorten
from sandbox.constants import Decision

logger = logging.getLogger(__name__)

RECENT = 10


def _val(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "-"


def _owner(paths: RunPaths) -> str:
    if not paths.owner.exists():
        return "no controller is running"
    try:
        owner = json.loads(paths.owner.read_text(encoding="utf-8"))
        host, pid = str(owner["worker"]).rsplit(":", 1)
    except (ValueError, KeyError, json.JSONDecodeError):
        return "a controller may be running (unreadable run.owner)"
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"no controller is running (pid {pid} left run.owner behind: it was killed)"
        except PermissionError:
            pass
    return f"a controller is running ({owner['worker']}, since {owner.get('since', '?')})"


def headline(view: RunView) -> list[str]:
    """The run's key numbers, a few lines."""
    records, state = view.records, view.state
    counts = Counter(r.decision for r in records)
    statuses = Counter(r.status.value for r in records if r.decision is Decision.CRASH)
    candidates = sum(1 for r in records if r.kind == "candidate")
    lines = [
        f"run {view.meta.get('run_tag', view.paths.root.name)} ({view.meta.get('profile', '?')} profile) "
        f"in {view.paths.root}",
        f"{len(records)} trials: {counts[Decision.BASELINE]} baseline, {candidates} candidates "
        f"({counts[Decision.KEEP]} keep, {counts[Decision.DISCARD]} discard, {counts[Decision.CRASH]} crash"
        + (f": {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}" if statuses else "")
        + ")",
    ]
    lines += canary_lines(records)
    lines += starved_lines(records)
    if state.noise is not None and state.best is not None:
        gain = state.noise.mean - state.best.val_bpb
        settings = JudgeSettings.model_validate(view.meta.get("judge", {}))
        lines.append(
            f"baseline {state.noise.mean:.6f} ± {state.noise.std:.6f} over {state.noise.n} runs; "
            f"noise threshold {state.noise.threshold:.6f}"
        )
        lines.append(
            f"noise s {state.noise.std:.6f} pooled over {state.noise.runs} repeated runs (df {state.noise.df}); "
            f"keeps confirmed on {settings.confirm_pairs} paired run(s) with the best, "
            f"false-keep rate {settings.false_keep_rate:g}"
            + ("" if state.noise.df else " (not yet: no noise estimate, min_delta alone)")
        )
        lines.append(
            f"best {state.best.val_bpb:.6f} ({state.best.trial_id}, {state.best.commit[:7]}): "
            f"{gain:.6f} below the baseline ({-100 * gain / state.noise.mean:+.2f}%)"
        )
    elif records:
        lines.append("the baseline is not complete yet")
    verdict = (
        "verifies"
        if view.check.ok
        else f"DOES NOT VERIFY: {view.check.bad}; only the {view.check.rows} rows before it are shown"
    )
    lines.append(f"ledger: {view.check.rows} rows, {verdict}; last hash {view.check.last_hash[:16]}")
    lines += cost_lines(view)
    return lines


def cost_lines(view: RunView) -> list[str]:
    """What the agent cost over the run (nothing when it made no API call)."""
    cost = view.cost
    if not cost.api_calls and not cost.cost_usd:
        return []
    programs = sum(p.agent.usage.cost_usd for p in view.programs if p.agent is not None)
    trials = sum(r.agent.usage.cost_usd for r in view.records if r.agent is not None)
    other = cost.cost_usd - programs - trials
    parts = [f"${trials:.4f} trials"]
    if programs:
        parts.append(f"${programs:.4f} program evolution")
    if other > 1e-12:
        parts.append(f"${other:.4f} proposals that produced no trial")
    return [
        f"agent cost so far: ${cost.cost_usd:.4f} ({', '.join(parts)}); {cost.api_calls} API calls, "
        f"{cost.input_tokens} input / {cost.output_tokens} output / {cost.cache_read_input_tokens} cache-read / "
        f"{cost.cache_creation_input_tokens} cache-write tokens; built-in prices as of {DEFAULT_PRICES_AS_OF}"
    ]


def canary_lines(records: list[TrialRecord]) -> list[str]:
    """The run canary's record (harness/canary.py), loud when the last one failed; nothing if none ran."""
    canaries = [r for r in records if r.kind == "canary"]
    if not canaries:
        return []
    failed = [r for r in canaries if r.canary is None or not r.canary.passed]
    lines = [
        f"canary (a known cheat that must be rejected): {len(canaries)} run, {len(canaries) - len(failed)} "
        f"rejected as they must be"
        + (f", {len(failed)} FAILED ({', '.join(r.trial_id for r in failed)})" if failed else "")
    ]
    last = canaries[-1]
    if last.canary is None or not last.canary.passed:
        lines.append(
            f"ISOLATION BROKEN: the last canary {last.trial_id} came back "
            f"{last.canary.got if last.canary else last.status.value}; the trials recorded since the last "
            "canary that was rejected are suspect"
        )
    return lines


def starved_lines(records: list[TrialRecord]) -> list[str]:
    """How often the host starved a run (re-run, never judged); nothing when it never did."""
    starved = [(r, len(r.starved)) for r in records if r.starved]
    if not starved:
        return []
    total = sum(n for _, n in starved)
    return [
        f"starved runs (the host took the CPUs; re-run, never judged): {total} in {len(starved)} trial(s)"
    ]


def paired_runs(record: TrialRecord) -> list[tuple[int, int, float | None, float | None]]:
    """(pair, seed, candidate val_bpb, best val_bpb) for each paired confirmation run of a trial."""
    pairs: dict[int, dict[str, Any]] = {}
    for run in record.runs:
        if run.pair:
            pairs.setdefault(run.pair, {"seed": run.seed})[run.role] = run.val_bpb
    return [(k, p["seed"], p.get("candidate"), p.get("best")) for k, p in sorted(pairs.items())]


def status_text(run_dir: Path) -> str:
    view = load_run(run_dir)
    lines = [*headline(view), _owner(view.paths), "", f"last {min(RECENT, len(view.records))} trials:"]
    for r in view.records[-RECENT:]:
        lines.append(
            f"  {r.trial_id}  {r.decision.value:8} {r.status.value:12} {_val(r.val_bpb):>9}  {shorten(r.description)}"
        )
        if r.decision is not Decision.BASELINE:
            lines.append(f"          {shorten(r.reason, 100)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report.md


def render_markdown(view: RunView, *, image: str | None = "progress.png") -> str:
    records = view.records
    out = [f"# Autoresearch report: {view.meta.get('run_tag', view.paths.root.name)}", ""]
    out += [f"- {line}" for line in headline(view)]
    if view.meta:
        out.append(
            f"- started {view.meta.get('created_at', '?')} with agent {view.meta.get('agent', '?')} "
            f"on the {view.meta.get('backend', '?')} backend"
        )
    usage = [r.agent.usage for r in records if r.agent is not None]
    if usage and not view.cost.api_calls:  # agents that cost nothing (offline, replay): their counts alone
        out.append(
            f"- agent usage: {sum(u.input_tokens for u in usage)} input / {sum(u.output_tokens for u in usage)} "
            f"output tokens, {sum(u.api_calls for u in usage)} API calls, ${sum(u.cost_usd for u in usage):.2f}"
        )
    if records:
        out.append(f"- from {records[0].started_at} to {records[-1].finished_at}")
    if image:
        out += ["", f"![progress]({image})"]

    out += ["", "## Kept changes", ""]
    keeps = [(i, r) for i, r in enumerate(records) if r.decision is Decision.KEEP]
    if not keeps:
        out.append("No candidate has been kept yet.")
    else:
        out += [
            "| trial | val_bpb | Δ vs previous best | code lines | description |",
            "|---|---|---|---|---|",
        ]
        for i, r in keeps:
            before = view.states[i - 1].best if i > 0 else None
            delta = f"{r.val_bpb - before.val_bpb:+.6f}" if before and r.val_bpb is not None else ""
            out.append(
                f"| {r.trial_id} | {_val(r.val_bpb)} | {delta} | {r.code_lines} | {_md(r.description)} |"
            )
        for _, r in keeps:
            out += ["", f"### {r.trial_id}: {_md(r.description)}", "", f"{r.reason}", ""]
            diff_path = view.paths.trial(r.trial_id).diff
            diff = diff_path.read_text(encoding="utf-8") if diff_path.exists() else "(diff missing)"
            out += ["```diff", diff.rstrip("\n"), "```"]

    out += ["", "## All trials", "", "| trial | decision | status | val_bpb | description | reason |"]
    out.append("|---|---|---|---|---|---|")
    for r in records:
        out.append(
            f"| {r.trial_id} | {r.decision.value} | {r.status.value} | {_val(r.val_bpb)} | "
            f"{_md(shorten(r.description))} | {_md(shorten(r.reason, 120))} |"
        )
    confirmed = [r for r in records if paired_runs(r)]
    if confirmed:
        out += ["", "## Paired confirmations", ""]
        out.append(
            "Each would-be keep ran again beside the best of the moment, same seed, back to back; "
            "it is judged on the differences, so a host that sped up or slowed down cancels out."
        )
        out += [
            "",
            "| trial | decision | pair | seed | candidate | best | difference |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in confirmed:
            for pair, seed, mine, theirs in paired_runs(r):
                diff = f"{mine - theirs:+.6f}" if mine is not None and theirs is not None else "-"
                out.append(
                    f"| {r.trial_id} | {r.decision.value} | {pair} | {seed} | {_val(mine)} | {_val(theirs)} | {diff} |"
                )
            if r.judge and r.judge.get("mean_diff") is not None:
                out.append(
                    f"| {r.trial_id} | | mean | | | | {r.judge['mean_diff']:+.6f} "
                    f"(needs < -{r.judge['paired_threshold']:.6f}) |"
                )
    failures = Counter(
        f"{r.status.value}: {shorten(r.reason, 100)}" for r in records if r.decision is Decision.CRASH
    )
    if failures:
        out += ["", "## Most frequent failures", ""]
        out += [f"- {n}× {_md(what)}" for what, n in failures.most_common(10)]
    out += notes_section(view)
    out += program_section(view)
    return "\n".join(out) + "\n"


def _block(text: str, lang: str = "") -> list[str]:
    """A fenced code block whose fence no run of backticks in `text` can close."""
    ticks = "`" * max(3, _longest_backticks(text) + 1)
    return [f"{ticks}{lang}", text.rstrip("\n"), ticks]


def _longest_backticks(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best


def notes_section(view: RunView) -> list[str]:
    """How the agent's research notes evolved: each version as a diff against the one before."""
    versions = [r for r in view.records if r.notes_sha256 is not None]
    if not versions:
        return []
    out = [
        "",
        "## Research notes",
        "",
        f"The agent rewrote its notes {len(versions)} time(s); each version is in notes/<trial>.md, its "
        "hash in that trial's ledger row. Written by the agent; they may quote untrusted program output.",
    ]
    previous, text = "", ""
    for r in versions:
        path = view.paths.notes / f"{r.trial_id}.md"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        state = "" if path.exists() else " (file missing)"
        if path.exists() and hashlib.sha256(text.encode()).hexdigest() != r.notes_sha256:
            state = " (EDITED: does not match the ledger's hash)"
        diff = "".join(
            difflib.unified_diff(
                previous.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile="notes (before)",
                tofile=f"notes ({r.trial_id})",
            )
        )
        out += [
            "",
            f"### written with {r.trial_id} ({len(text.encode())} bytes, sha256 {(r.notes_sha256 or '')[:12]}){state}",
            "",
        ]
        out += _block(diff or "(no change)", "diff")
        previous = text
    out += ["", "### The notes now", "", *_block(text, "markdown")]
    return out


def program_section(view: RunView) -> list[str]:
    """Each program-evolution step: what changed in program.md's research guidance, and why."""
    if not view.programs:
        return []
    out = ["", "## Program edits", ""]
    out.append(
        "program_evolution_every was on: the agent revised program.md's research-guidance section (the "
        "rules stay the human's). Each version is in programs/<id>.md and in the lineage "
        "(refs/autoresearch/program)."
    )
    for p in view.programs:
        cost = f", ${p.agent.usage.cost_usd:.4f}" if p.agent is not None else ""
        out += [
            "",
            f"### {p.program_id} after {p.after_candidates} candidates ({p.outcome}{cost}): {_md(p.description)}",
        ]
        if p.outcome != "applied":
            continue
        diff_path = view.paths.programs / f"{p.program_id}.diff"
        diff = diff_path.read_text(encoding="utf-8") if diff_path.exists() else "(diff missing)"
        out += ["", *_block(diff, "diff")]
    return out


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write progress.png and report.md into the run folder; returns their paths."""

    view = load_run(run_dir)
    png = plot_progress(view, view.paths.progress_png)
    md = view.paths.report_md
    md.write_text(render_markdown(view, image=png.name), encoding="utf-8")
    return png, md
