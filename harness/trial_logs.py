"""`python -m harness logs TRIAL`: everything about one trial, laid out for a human auditing a run.

For the trial: its ledger row (decision, status, scores, the canary check on a control trial), the
diff to its parent. Then for each run of it (the first, the paired confirmation's runs of it and of
the best, runs the host starved (starved/<n>/), attempts that were
interrupted): the verdict; the limits it ran under; the exit reasons of the TRAIN and EVAL containers
(from the audit trail, else from the engine's state); the audit events, denials marked; the
evaluator's report (its deciding check, every probe, what the graph is made of, the hashes that pin
the evaluator and the data); then the TRAIN log (the candidate's own output, untrusted), the EVAL
log, the sandbox's step log; finally the controller's log of the trial.

It reads the trial folder and the ledger and writes nothing. Files that are missing are skipped; a
file that cannot be parsed is shown raw, so a damaged folder still shows what it holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harness.config import RunPaths, TrialPaths
from harness.records.chain import Ledger
from harness.records.schemas import TrialRecord
from sandbox import constants as C
from sandbox.engine import audit
from sandbox.report import parse_report

logger = logging.getLogger(__name__)

RULE_WIDTH = 70


class TrialNotFound(LookupError):
    """No folder for that trial id in the run."""


def find_trial(paths: RunPaths, trial_id: str) -> TrialPaths:
    direct = paths.trial(trial_id)
    if direct.dir.is_dir():
        return direct
    if paths.trials.is_dir():
        for folder in sorted(paths.trials.glob(f"{trial_id}.abandoned*")):
            return TrialPaths(folder)
    raise TrialNotFound(f"no trial {trial_id} under {paths.trials}")


def section(title: str, body: str) -> list[str]:
    return ["", f"===== {title} " + "=" * max(0, RULE_WIDTH - len(title)), body.rstrip("\n")]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _json(path: Path) -> Any:
    try:
        return json.loads(_read(path))
    except (OSError, ValueError):
        return None


def _val(value: object) -> str:
    return f"{value:.6f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


# --------------------------------------------------------------------------- the ledger row


def record_lines(record: TrialRecord | None) -> list[str]:
    if record is None:
        return ["no ledger row: the trial never finished (interrupted or abandoned)"]
    lines = [
        f"{record.decision.value} ({record.status.value}) val_bpb {_val(record.val_bpb)}"
        f" claimed {_val(record.claimed_val_bpb)}: {record.reason}",
        f"kind {record.kind}; description: {record.description}",
    ]
    if record.candidate_commit is not None:
        lines.append(f"commit {record.candidate_commit} (parent {record.parent_commit})")
    if record.canary is not None:
        c = record.canary
        verdict = "PASSED" if c.passed else "FAILED: the isolation or the evaluator is broken"
        lines.append(f"CONTROL TRIAL (run canary) {verdict}: expected {c.expected}, got {c.got}")
        lines.append(f"  its source (no git commit) has SHA-256 {c.source_sha256}")
        lines += [f"  the canary reported reaching {e}" for e in c.escapes]
    return lines


# --------------------------------------------------------------------------- one run


def limits_text(verdict: dict[str, Any] | None, events: list[dict[str, Any]]) -> str:
    start = next((e for e in events if e.get("event") == "limits"), None)
    limits = (start or {}).get("detail", {}).get("limits") or (verdict or {}).get("limits") or {}
    if not limits:
        return "(not recorded)"
    return json.dumps(limits, indent=2, sort_keys=True)


def exit_lines(folder: Path, events: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for role, state_file in (("train", C.TRAIN_STATE_FILE), ("eval", C.EVAL_STATE_FILE)):
        exits = [e for e in events if e.get("container") == role and e.get("event") == "exit"]
        if exits:
            d = exits[-1].get("detail", {})
            name = d.get("container_name", role)
            lines.append(
                f"{role.upper():5} {name}: exit code {d.get('exit_code')} after {d.get('wall_s')} s"
                f" -> {d.get('status')}: {d.get('reason')}"
            )
            flags = [k for k in ("oom_killed", "sigterm_sent", "sigkilled", "timed_out") if d.get(k)]
            if flags:
                lines.append(f"      {', '.join(flags)}")
            continue
        state = _json(folder / state_file)
        if isinstance(state, dict) and isinstance(state.get("State"), dict):
            s = state["State"]
            lines.append(
                f"{role.upper():5} {state.get('Name', '').lstrip('/')}: exit code {s.get('ExitCode')}, "
                f"OOMKilled {s.get('OOMKilled')}, {s.get('StartedAt')} -> {s.get('FinishedAt')}"
                + (f", error {s.get('Error')}" if s.get("Error") else "")
            )
    return lines or ["(no exit recorded: the step did not run)"]


def event_lines(events: list[dict[str, Any]]) -> list[str]:
    lines = []
    for e in events:
        mark = "DENIED " if e.get("event") in audit.DENIALS else "       "
        detail = {k: v for k, v in (e.get("detail") or {}).items() if k not in ("limits", "container_name")}
        if e.get("event") == "limits":
            detail["limits"] = "(see limits above)"
        lines.append(
            f"{mark}{str(e.get('time', ''))[11:23]:12} {e.get('container', ''):5} {e.get('event', ''):20} "
            + json.dumps(detail, sort_keys=True, default=str)
        )
    denials = sorted({str(e.get("event")) for e in events if e.get("event") in audit.DENIALS})
    lines.append(f"{len(lines)} events; denials: {', '.join(denials) if denials else 'none'}")
    return lines


def report_lines(path: Path) -> list[str]:
    """The evaluator's report, validated as the controller read it; a malformed one is shown raw."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [f"(unreadable: {exc})"]
    report, why = parse_report(raw)
    if report is None:
        return [f"(malformed: {why})", raw.decode("utf-8", errors="replace")]
    lines = [
        f"status {report.status}, check {report.check}: {report.reason}",
        f"val_bpb {_val(report.val_bpb)} over {report.tokens_scored} tokens / "
        f"{report.bytes_scored} bytes (unigram baseline {_val(report.unigram_bpb)}); "
        f"profile {report.profile}, device {report.device}, torch {report.torch_version}",
    ]
    if report.probes:
        lines.append("probes:")
        for name, result in report.probes.items():
            verdict = "passed" if result.passed else "FAILED"
            lines.append(f"  {name:17} {verdict:7} {result.detail}")
        if report.probe_deviation_nats:
            lines.append(
                "  max deviation (nats): "
                + ", ".join(f"{k} {v}" for k, v in sorted(report.probe_deviation_nats.items()))
            )
    else:
        lines.append("probes: not run (the artifact was rejected before them)")
    lines.append(
        f"artifact {report.artifact_sha256} ({report.artifact_bytes} bytes), "
        f"{report.param_count} parameters, dtypes {report.float_dtypes}"
    )
    if report.ops:
        lines.append("operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.ops.items())))
    lines.append(f"timings (s): {report.timings}")
    lines += [f"hash {k}: {v}" for k, v in sorted(report.hashes.items())]
    return lines


def run_lines(label: str, folder: Path) -> list[str]:
    out: list[str] = []
    verdict = _json(folder / C.VERDICT_FILE)
    verdict = verdict if isinstance(verdict, dict) else None
    events = list(audit.read_events(folder / C.AUDIT_FILE))
    if verdict is not None:
        out += section(
            f"{label}: verdict",
            f"status {verdict.get('status')}: {verdict.get('reason')}\n"
            f"val_bpb {verdict.get('val_bpb')} (claimed {verdict.get('claimed_val_bpb')}), "
            f"seed {verdict.get('seed')}, backend {verdict.get('backend')}, gpus {verdict.get('gpu_ids')}\n"
            f"images {verdict.get('images')}\n"
            f"peak memory {verdict.get('peak_memory_gb')} GB, timings {verdict.get('timings')}",
        )
    elif (folder / C.SANDBOX_LOG_FILE).exists():
        out += section(f"{label}: verdict", "none: the run did not finish (see the sandbox steps below)")
    if verdict is not None or events:
        out += section(f"{label}: limits", limits_text(verdict, events))
        out += section(f"{label}: exit reasons", "\n".join(exit_lines(folder, events)))
    if events:
        out += section(f"{label}: audit events ({C.AUDIT_FILE})", "\n".join(event_lines(events)))
    if (folder / C.REPORT_FILE).exists():
        out += section(
            f"{label}: evaluator report ({folder / C.REPORT_FILE})",
            "\n".join(report_lines(folder / C.REPORT_FILE)),
        )
    for name, title in (
        (C.TRAIN_LOG_FILE, "TRAIN log (untrusted candidate output)"),
        (C.EVAL_LOG_FILE, "EVAL log"),
        (C.SANDBOX_LOG_FILE, "sandbox steps"),
    ):
        path = folder / name
        if path.exists():
            out += section(f"{label}: {title}", _read(path))
    return out


def trial_logs_text(run_dir: Path, trial_id: str) -> str:
    """The whole text `python -m harness logs` prints."""
    paths = RunPaths(run_dir)
    tp = find_trial(paths, trial_id)
    record = None
    if paths.ledger.exists():
        record = next((r for r in Ledger(paths.ledger).records() if r.trial_id == trial_id), None)
    out = [f"trial {trial_id} in {tp.dir}", *record_lines(record)]
    if tp.diff.exists():
        out += section("diff to parent", _read(tp.diff))
    runs = [("run 0", tp.dir), ("confirm", tp.confirm_dir)]
    runs += [  # the paired confirmation's later runs (the best's and the candidate's)
        (p.name, p)
        for p in sorted(tp.dir.glob("run-*"), key=lambda p: int(p.name[4:] or 0))
        if p.name[4:].isdigit()
    ]
    for aside in (tp.starved_dir, tp.interrupted_dir):  # runs the host starved; interrupted attempts
        if aside.is_dir():
            runs += [(p.relative_to(tp.dir).as_posix(), p) for p in sorted(aside.iterdir()) if p.is_dir()]
    for label, folder in runs:
        if folder.is_dir():
            out += run_lines(label, folder)
    if tp.controller_log.exists():
        out += section("controller", _read(tp.controller_log))
    return "\n".join(out) + "\n"
