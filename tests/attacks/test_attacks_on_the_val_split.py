"""Attacks on the val split: the documents a candidate is scored on cannot be rebuilt from public code.

The tiny corpus comes from a deterministic generator that is public code anyone could paste into a
train.py (the suite's runner pastes it: the trainer image holds only sandbox/incontainer/). While val was a fixed slice of its output, a candidate could
regenerate the val documents inside TRAIN and export a memoriser of them: guess_val_split's scores 0.04
val_bpb on that old split, where the honest baseline train.py scores about 0.35 and an honest n-gram of
the train split 0.72. prepare.py now draws val from a secret seed kept on the host only, so what the
candidate regenerates is merely more text from the same distribution: the same memoriser scores 0.80 on
a secret split (the honest n-gram 0.71-0.72, as on the old split).

Why not `assert_contained`: its "not scored" check (val_bpb under the unigram baseline) is for cheats
that learn nothing, and this attack's model is an n-gram of real text from the right distribution, which
beats unigram on any split. The check specific to this property compares the evaluator's val_bpb with
what the attack measured itself, with prepare's metric inside TRAIN, on the documents it believes are
val: with a derivable split the two are equal; with a secret one the first is many times the second.
"""

from __future__ import annotations

import pytest

from tests.attacks.conftest import SECRET, AttackResult

pytestmark = pytest.mark.docker

EXPORT_BUDGET_S = 120  # it imports torch and exports a graph: not a test of the clock (conftest._budgets)
# Below this only memorisation takes this attack's model; the honest baseline train.py scores about 0.35.
HONEST_BPB = 0.3


@pytest.mark.attack("guess_val_split", time_budget_s=EXPORT_BUDGET_S)
def test_val_split_cannot_be_regenerated_from_public_code(attack: AttackResult) -> None:
    context = f"under {attack.runtime}: {attack.status} ({attack.reason})\n{attack.log()[-3000:]}"
    assert attack.returncode == 0, f"the CLI failed (infrastructure, not a verdict) {context}"
    assert not [name for name, data in attack.files.items() if SECRET.encode() in data]
    assert attack.status == "ok", f"the memoriser is a valid model and must be scored {context}"
    assert attack.val_bpb is not None
    facts = attack.json_line("ATTACK")
    # The attack really rebuilt the old val split, and memorising it works: a cheat with teeth.
    assert facts["old_corpus_sha256_matches"] is True, facts
    assert facts["believed_val_docs"] > 1000, facts
    believed = float(facts["believed_val_bpb"])
    assert believed < HONEST_BPB / 2, facts
    # The split it is scored on is not the one it rebuilt: memorising it bought nothing.
    assert attack.val_bpb > max(HONEST_BPB, 4 * believed), (
        f"val_bpb {attack.val_bpb} is memorisation-good (believed val {believed}): "
        f"the val split was regenerated from public code {context}"
    )
