"""Attacks through the artifact: whatever the candidate leaves in its output channel, only a pure,
causal, per-row, finite graph of allow-listed operators is ever scored, and nothing in it runs
before the evaluator has checked it.

Properties, each with the attack that would break it (tests/attacks/corpus/NAME.py). The model
attacks would score if their check were gone (measured on the tiny split, see each file):
- causality: a graph that reads token t+1 at position t (non_causal, ~0.03 val_bpb), or only at
  positions or rows it picks by a hash of the tokens (position_lottery, row_lottery): every scored row
  is checked, not a sample;
- row independence: a graph that fits a bigram on the other rows of its batch (row_leak, ~1.6), or
  only in rows it picks by content (cross_row_lottery);
- purity: a graph that counts its calls in a buffer and cheats after the probes (buffer_mutation);
- the signature: a graph that returns its own loss and score beside the logits (extra_outputs);
- the operator allow-list: a graph that reads the validation split off the evaluator's disk with
  aten.from_file (disallowed_op, ~0.99);
- no pickle is ever loaded: example inputs whose unpickling patches the evaluator's metric
  (pickle_payload; torch.export.load runs it and the artifact then scores 0.0001);
- finiteness: NaN or -inf logits that a lenient metric would skip (nan_logits, inf_logits).
The archive and channel attacks target the evaluator's integrity rather than the score: links out
of the channel (symlink_artifact, symlink_member, hardlink_artifact), a zip bomb, and an output
larger than the channel's cap (oversized_output). Each test names the check that must catch it.
"""

from __future__ import annotations

import pytest

from tests.attacks.conftest import AttackResult

pytestmark = pytest.mark.docker

MiB = 1 << 20
# The model attacks import torch and export a graph (the zip bomb deflates 480 MiB), which on a loaded
# 2-core machine can outlast the suite's 20 s budget; their target is the evaluator, not the clock
# (conftest._budgets).
EXPORT_BUDGET_S = 300  # a bound for a hung export, never reached on a quiet machine (~5-30 s)


def _rejected_by(attack: AttackResult, *checks: str) -> None:
    attack.assert_contained("rejected")
    assert attack.val_bpb is None
    assert attack.report.get("check") in checks, f"{attack.report.get('check')}: {attack.reason}"


def _probe(attack: AttackResult, name: str) -> bool:
    return bool(attack.report["probes"][name]["passed"])


@pytest.mark.attack("non_causal", time_budget_s=EXPORT_BUDGET_S)
def test_a_graph_that_reads_the_next_token_fails_the_causality_probe(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:causality")
    assert not _probe(attack, "causality")
    assert attack.report["probe_deviation_nats"]["causality"] > 1.0  # a real leak, not noise
    assert _probe(attack, "finite") and _probe(attack, "determinism") and _probe(attack, "row_alone")


@pytest.mark.attack("row_leak", time_budget_s=EXPORT_BUDGET_S)
def test_a_graph_that_learns_from_other_rows_fails_the_row_probe(attack: AttackResult) -> None:
    # A row run alone has no other rows to learn from: the one-batch row check catches it before it is
    # scored; any cross-row leak worth having also reads other rows' later tokens (the causality pass).
    _rejected_by(attack, "probe:row_alone", "probe:causality", "probe:row_independence")
    assert _probe(attack, "finite") and _probe(attack, "determinism")


# Lotteries: leaks confined to rows or positions the graph picks by a hash of the tokens it sees. A
# check on one sampled batch let them score in 2 of 3 (rows) and 2 of 6 (positions) evaluations; every
# scored row is checked now. Each scores below its own honest bigram with the coverage check switched
# off (tests/test_evaluator_checks_every_scored_row.py).


@pytest.mark.attack("position_lottery", time_budget_s=EXPORT_BUDGET_S)
def test_a_leak_at_positions_chosen_by_content_is_rejected(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:causality", "probe:row_independence")
    assert _probe(attack, "finite") and _probe(attack, "determinism") and _probe(attack, "row_alone")
    assert attack.json_line("ATTACK ")["rate"] == 0.02


@pytest.mark.attack("row_lottery", time_budget_s=EXPORT_BUDGET_S)
def test_a_leak_in_rows_chosen_by_content_is_rejected(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:causality", "probe:row_independence")
    assert _probe(attack, "finite") and _probe(attack, "determinism")


@pytest.mark.attack("cross_row_lottery", time_budget_s=EXPORT_BUDGET_S)
def test_rows_chosen_by_content_that_read_other_rows_are_rejected(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:row_alone", "probe:causality", "probe:row_independence")
    assert _probe(attack, "finite") and _probe(attack, "determinism")


@pytest.mark.attack("buffer_mutation", time_budget_s=EXPORT_BUDGET_S)
def test_state_hidden_in_the_graph_is_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "artifact:state_mutation", "runtime:state_mutation")
    seen = attack.json_line("ATTACK ")
    assert seen["in_place_ops"], seen  # the mutation really is in the exported graph


@pytest.mark.attack("extra_outputs", time_budget_s=EXPORT_BUDGET_S)
def test_outputs_beside_the_logits_are_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "artifact:signature_outputs")
    assert len(attack.json_line("ATTACK ")["outputs"]) == 3
    assert attack.verdict["claimed_val_bpb"] == pytest.approx(0.0001)  # recorded, never believed


@pytest.mark.attack("disallowed_op", time_budget_s=EXPORT_BUDGET_S)
def test_an_operator_that_reads_files_is_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "artifact:op_not_allowed")
    assert "from_file" in attack.reason
    assert "aten.from_file.default" in attack.json_line("ATTACK ")["ops"]  # it was in the graph
    assert attack.report["probes"] == {}  # refused before the graph ever ran


@pytest.mark.attack("pickle_payload", time_budget_s=EXPORT_BUDGET_S)
def test_a_pickle_in_the_artifact_is_refused_and_never_runs(attack: AttackResult) -> None:
    _rejected_by(attack, "artifact:pickle_payload")
    assert "eval" in attack.reason  # the scan names the global the payload calls
    assert attack.json_line("ATTACK ")["swapped"], "the attack did not plant its pickle"
    marker = b"PAYLOAD-RAN-IN-EVAL"  # what the payload prints and writes when it runs
    assert attack.log("eval"), "no evaluator log to check"
    ran = [name for name, data in attack.files.items() if marker in data]
    assert not ran, f"the payload ran: its marker is in {ran}"


@pytest.mark.attack("symlink_artifact")
def test_a_symlinked_model_is_never_followed(attack: AttackResult) -> None:
    attack.assert_contained("crash", "rejected")
    assert attack.json_line("ATTACK ")["model.pt2"] == "/data/val/shard_00000.npy"  # the link was made
    if attack.status == "crash":  # the controller saw no regular model.pt2: EVAL never started
        assert "no model.pt2" in attack.reason
        assert attack.verdict["report"] is None
    else:
        assert attack.report["check"] == "artifact:symlink"
        assert attack.report["artifact_sha256"] is None  # never read


@pytest.mark.attack("symlink_member")
def test_a_symlink_inside_the_archive_is_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "artifact:member_type")
    assert "symlink" in attack.reason


@pytest.mark.attack("hardlink_artifact")
def test_a_hard_linked_model_is_refused(attack: AttackResult) -> None:
    seen = attack.json_line("ATTACK ")
    linked = {source: err for source, err in seen["links"].items() if err not in ("EXDEV", "EPERM", "EACCES")}
    assert not linked, f"model.pt2 could be hard-linked to a file outside the channel: {linked}"
    assert seen["fallback"] == "ok" and seen["nlink"] == 2  # the second name inside the channel exists
    _rejected_by(attack, "artifact:extra_files", "artifact:hard_link")


@pytest.mark.attack("zip_bomb", time_budget_s=EXPORT_BUDGET_S)
def test_a_zip_bomb_is_refused_before_it_expands(attack: AttackResult) -> None:
    seen = attack.json_line("ATTACK ")
    assert seen["bytes_on_disk"] < 4 * MiB and seen["expands_to"] > 400 * MiB  # a real bomb
    _rejected_by(attack, "artifact:zip_bomb")


@pytest.mark.attack("oversized_output")
def test_an_output_larger_than_the_cap_ends_at_the_cap(attack: AttackResult) -> None:
    attack.assert_contained("output_limit")
    seen = attack.json_line("ATTACK ")
    cap = int(attack.verdict["limits"]["output_limit_mb"]) * MiB
    assert seen["error"] in ("ENOSPC", "EFBIG"), seen
    assert 0 < seen["written"] <= cap, seen


@pytest.mark.attack("nan_logits", time_budget_s=EXPORT_BUDGET_S)
def test_nan_logits_are_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:finite", "runtime:non_finite_logits")
    if attack.report["check"] == "probe:finite":
        assert not _probe(attack, "finite")


@pytest.mark.attack("inf_logits", time_budget_s=EXPORT_BUDGET_S)
def test_infinite_logits_are_refused(attack: AttackResult) -> None:
    _rejected_by(attack, "probe:finite", "runtime:non_finite_logits")
    if attack.report["check"] == "probe:finite":
        assert not _probe(attack, "finite")
