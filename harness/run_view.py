"""A run folder as read for reporting: the verified ledger rows, the judge's state after each, the cost.

Shared by report.md (harness/report.py) and progress.png (harness/report_plot.py), so neither imports
the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.agents.base import Usage
from harness.config import RunPaths
from harness.judge import JudgeSettings, JudgeState, replay
from harness.records.chain import Ledger, VerifyResult, verify
from harness.records.schemas import NON_TRIAL_KINDS, ProgramRecord, TrialRecord, run_cost

DESCRIPTION_WIDTH = 60


class ReportError(Exception):
    """The folder is not a run folder (no ledger)."""


@dataclass(frozen=True)
class RunView:
    """A run folder as read for reporting."""

    paths: RunPaths
    meta: dict[str, Any]
    records: list[TrialRecord]
    check: VerifyResult
    states: list[JudgeState]  # the judge's state after each record
    programs: list[ProgramRecord] = field(default_factory=list)  # program-evolution steps
    cost: Usage = field(default_factory=Usage)  # the agent's, over every verified row

    @property
    def state(self) -> JudgeState:
        return self.states[-1] if self.states else JudgeState()


def load_run(run_dir: Path) -> RunView:
    paths = RunPaths(run_dir)
    if not paths.ledger.exists():
        raise ReportError(f"{run_dir} has no ledger.jsonl: not a run folder, or no trial has finished yet")
    meta: dict[str, Any] = {}
    if paths.run_json.exists():
        meta = json.loads(paths.run_json.read_text(encoding="utf-8"))
    check = verify(paths.ledger)
    # Only the rows that verify: whatever follows an edited row cannot be vouched for.
    rows = Ledger(paths.ledger).rows()[: check.rows] if check.ok else _verified(paths, check)
    records = [TrialRecord.model_validate(row) for row in rows if row.get("kind") not in NON_TRIAL_KINDS]
    programs = [ProgramRecord.model_validate(row) for row in rows if row.get("kind") == "program"]
    settings = JudgeSettings.model_validate(meta.get("judge", {}))
    states = [replay((r.judged() for r in records[: i + 1]), settings) for i in range(len(records))]
    return RunView(
        paths=paths,
        meta=meta,
        records=records,
        check=check,
        states=states,
        programs=programs,
        cost=run_cost(rows),
    )


def _verified(paths: RunPaths, check: VerifyResult) -> list[dict[str, Any]]:
    lines = paths.ledger.read_bytes().split(b"\n")[: check.rows]
    return [json.loads(line) for line in lines]


def shorten(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
