"""The offline agent never proposes a batch size that train.py's own assert would refuse.

train.py asserts TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0 before training; a proposal
that breaks it is a wasted trial recorded as a crash. Checked independently of the agent: Python itself
evaluates train.py's module-level assignments (with a stub PROFILE) for every proposal of a 200-trial
run on the real train.py, and MAX_SEQ_LEN comes from prepare.PROFILES. The guard must not freeze the
batch knobs (they are still explored), and must not stall the agent on a train.py that already breaks
the rule or lacks one of the knobs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import prepare
from harness.agents.offline import parse_changes
from tests.offline_runs import simulate_run

TRAIN_PY = (Path(__file__).resolve().parents[1] / "train.py").read_text()


def batch_sizes(source: str, profile: str) -> tuple[object, object]:
    """(TOTAL_BATCH_SIZE, DEVICE_BATCH_SIZE) as Python evaluates train.py's assignments for `profile`.

    Only module-level assignments and if-statements run, each on its own, with a stub PROFILE and no
    builtins; one that needs anything else (imports, torch) fails with NameError and is skipped.
    """
    env: dict[str, object] = {"PROFILE": SimpleNamespace(name=profile), "__builtins__": {}}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign | ast.If):
            module = ast.Module(body=[stmt], type_ignores=[])
            try:
                exec(compile(module, "<hparams>", "exec"), env)
            except (NameError, AttributeError, TypeError, KeyError):
                continue
    return env.get("TOTAL_BATCH_SIZE"), env.get("DEVICE_BATCH_SIZE")


def test_the_real_train_py_still_states_the_rule_this_file_checks() -> None:
    plain = re.sub(r"\s+", " ", TRAIN_PY)
    assert "tokens_per_micro_step = DEVICE_BATCH_SIZE * MAX_SEQ_LEN" in plain
    assert "assert TOTAL_BATCH_SIZE % tokens_per_micro_step == 0" in plain


@pytest.mark.parametrize("profile", ["tiny"])
def test_two_hundred_proposals_on_the_real_train_py_keep_the_batch_valid(profile: str) -> None:
    max_seq_len = prepare.PROFILES[profile].max_seq_len
    total, device = batch_sizes(TRAIN_PY, profile)
    assert isinstance(total, int) and isinstance(device, int)
    assert total % (device * max_seq_len) == 0, "the baseline itself must satisfy the rule"

    proposals = simulate_run(TRAIN_PY, profile, 200)

    batch_moves = 0
    for _, proposal in proposals:
        total, device = batch_sizes(proposal.train_py, profile)
        assert isinstance(total, int) and isinstance(device, int), proposal.description
        assert total % (device * max_seq_len) == 0, f"train.py would refuse: {proposal.description}"
        names = {name for name, _, _ in parse_changes(proposal.description) or ()}
        batch_moves += bool(names & {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"})
    assert batch_moves >= 3, f"the batch knobs should still be explored, got {batch_moves} of 200"


def test_a_train_py_that_already_breaks_the_rule_still_gets_proposals() -> None:
    source = "TOTAL_BATCH_SIZE = 1000  # not a multiple of 8 * 256\nDEVICE_BATCH_SIZE = 8\nMATRIX_LR = 0.04\n"

    proposals = simulate_run(source, "tiny", 10)

    assert len({p.description for _, p in proposals}) == 10


def test_without_a_total_batch_knob_the_device_batch_moves_freely() -> None:
    source = "DEVICE_BATCH_SIZE = 8  # rows per step\n"

    descriptions = {p.description for _, p in simulate_run(source, "tiny", 2)}

    assert descriptions == {"DEVICE_BATCH_SIZE 8 -> 16", "DEVICE_BATCH_SIZE 8 -> 4"}
