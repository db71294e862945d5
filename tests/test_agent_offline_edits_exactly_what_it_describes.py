"""The offline agent changes exactly the hyperparameters its description names, for the run's profile.

Its description is what the ledger and results.tsv record; a mismatch would make every conclusion drawn
from the run wrong. Checked independently of the agent's own parser: Python itself evaluates the
module-level assignments of train.py before and after (with a stub PROFILE), and the values that differ
must be exactly the described ones, with the described new values. Also: every proposal parses, comments
and layout survive, the same seed replays the same proposals, a run does not repeat a proposal, and
settings that are not hyperparameters (seeds, time reserves, log intervals) are never touched. Run on the
real train.py for both profiles and on other layouts (if-blocks, per-profile dicts, non-ASCII comments).
"""

from __future__ import annotations

import ast
import functools
import io
import textwrap
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.agents import AgentContext, AgentFatal, HistoryRow, Proposal
from harness.agents.offline import OfflineAgent, parse_changes
from tests.offline_runs import simulate_run

TRAIN_PY = (Path(__file__).resolve().parents[1] / "train.py").read_text()
NOT_HYPERPARAMETERS = {"SEED", "EXPORT_RESERVE_S", "LOG_EVERY_S", "TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE"}

IF_BLOCK_LAYOUT = textwrap.dedent(
    '''\
    """An older layout: module defaults, then a block that overrides some for the tiny profile."""
    from prepare import PROFILE

    DEPTH = 8  # transformer blocks
    N_EMBD = 768  # width
    HEAD_DIM = 128  # per head
    MATRIX_LR = 0.04  # Muon LR — η for the matrices
    WARMUP_RATIO = 0.0  # linear warmup
    TOTAL_BATCH_SIZE = 2**19  # tokens per step
    ADAM_BETAS = (0.8, 0.95)  # AdamW betas
    EXPORT_RESERVE_S = 45.0  # not a hyperparameter

    if PROFILE.name == "tiny":  # CPU
        DEPTH = 3
        N_EMBD = 192
        HEAD_DIM = 64
        TOTAL_BATCH_SIZE = 2**12
    elif PROFILE.name in ("gpu", "h100"):
        MATRIX_LR = 0.05

    if device == "cuda":  # undecidable: whatever it sets is never a knob
        EMBEDDING_LR = 0.6
    '''
)

PROFILE_DICT_LAYOUT = textwrap.dedent(
    """\
    from prepare import PROFILE

    HPARAMS = {
        "tiny": {"DEPTH": 3, "MATRIX_LR": 0.02, "DEVICE_BATCH_SIZE": 16},  # CPU sizes
        "gpu": dict(DEPTH=8, MATRIX_LR=0.04, DEVICE_BATCH_SIZE=128),
    }
    DEPTH = HPARAMS[PROFILE.name]["DEPTH"]
    MATRIX_LR = HPARAMS[PROFILE.name]["MATRIX_LR"]
    DEVICE_BATCH_SIZE = HPARAMS[PROFILE.name]["DEVICE_BATCH_SIZE"]
    WEIGHT_DECAY = {"tiny": 0.1, "gpu": 0.2}[PROFILE.name]  # per profile, inline
    LOGIT_SOFTCAP = 15.0  # shared
    """
)


@functools.cache
def effective_values(source: str, profile: str) -> dict[str, object]:
    """Module-level UPPER_CASE numbers and tuples as Python evaluates them for `profile`.

    Only the module's assignments and if-statements run, each in its own try, with no builtins but
    `dict` and a stub PROFILE; a statement that needs anything else (imports, torch, the clock) fails
    with NameError and is skipped. The dicts of a per-profile layout are flattened to
    `NAME["profile"]["key"]` entries.
    """
    template = ast.parse("try:\n    pass\nexcept (NameError, AttributeError, TypeError, KeyError):\n    pass")
    guard = template.body[0]
    assert isinstance(guard, ast.Try)
    guarded: list[ast.stmt] = [
        ast.Try(body=[stmt], handlers=guard.handlers, orelse=[], finalbody=[])
        for stmt in ast.parse(source).body
        if isinstance(stmt, ast.Assign | ast.If)
    ]
    module = ast.fix_missing_locations(ast.Module(body=guarded, type_ignores=[]))
    builtins = {"dict": dict, "NameError": NameError, "AttributeError": AttributeError}
    builtins |= {"TypeError": TypeError, "KeyError": KeyError}
    env: dict[str, object] = {"PROFILE": SimpleNamespace(name=profile), "__builtins__": builtins}
    exec(compile(module, "<hparams>", "exec"), env)
    values: dict[str, object] = {}
    for name, value in env.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            for outer, inner in value.items():
                for key, item in inner.items():
                    values[f'{name}["{outer}"]["{key}"]'] = item
        elif name.isupper() and isinstance(value, int | float | tuple):
            values[name] = value
    return values


@functools.cache
def comments(source: str) -> tuple[str, ...]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return tuple(t.string for t in tokens if t.type == tokenize.COMMENT)


def check_proposal(before: str, proposal: Proposal, profile: str) -> None:
    after = proposal.train_py
    ast.parse(after)
    assert comments(after) == comments(before)
    assert len(after.splitlines()) == len(before.splitlines())
    changes = parse_changes(proposal.description)
    assert changes is not None, proposal.description
    old_values, new_values = effective_values(before, profile), effective_values(after, profile)
    changed = {
        name for name in old_values.keys() | new_values.keys() if old_values.get(name) != new_values.get(name)
    }
    described = {name.split("[")[0] if not name.startswith("HPARAMS") else name for name, _, _ in changes}
    # a per-profile dict entry also changes the global read from it: HPARAMS["tiny"]["DEPTH"] feeds DEPTH
    fed = {name.rsplit('["', 1)[1].rstrip('"]') for name in described if name.startswith("HPARAMS")}
    assert described <= changed <= described | fed, proposal.description
    assert not changed & NOT_HYPERPARAMETERS
    for name, old, new in changes:
        base, _, index = name.partition("[")
        if base == "HPARAMS":
            base, index = name, ""
        was, now = old_values[base], new_values[base]
        if index:
            was, now = was[int(index.rstrip("]"))], now[int(index.rstrip("]"))]  # type: ignore[index]
        assert was == pytest.approx(old, rel=1e-3), (name, was, old)
        assert now == pytest.approx(new, rel=1e-3), (name, now, new)
        assert now != was


def run_proposals(source: str, profile: str, n: int, seed: int = 0, *, check: bool = True) -> list[Proposal]:
    """n proposals as a run would ask for them, each checked against the source it edited."""
    proposals = []
    for edited, proposal in simulate_run(source, profile, n, seed):
        if check:
            check_proposal(edited, proposal, profile)
        proposals.append(proposal)
    return proposals


@pytest.mark.parametrize(("profile", "count"), [("tiny", 50), ("gpu", 25)])
def test_fifty_proposals_on_the_real_train_py_change_exactly_what_they_describe(
    profile: str, count: int
) -> None:
    proposals = run_proposals(TRAIN_PY, profile, count)

    descriptions = [p.description for p in proposals]
    assert len(set(descriptions)) == len(descriptions), "a proposal was repeated"
    touched = {name for d in descriptions for name, _, _ in parse_changes(d) or ()}
    assert len(touched) >= 8, f"the search should cover many knobs, got {sorted(touched)}"
    assert any(", " in d for d in descriptions), "some proposals should change two knobs"


@pytest.mark.parametrize(
    ("layout", "profile"),
    [
        (IF_BLOCK_LAYOUT, "tiny"),
        (IF_BLOCK_LAYOUT, "gpu"),
        (PROFILE_DICT_LAYOUT, "tiny"),
        (PROFILE_DICT_LAYOUT, "gpu"),
    ],
)
def test_other_layouts_are_edited_where_the_profile_reads_them(layout: str, profile: str) -> None:
    proposals = run_proposals(layout, profile, 30)

    touched = {name.split("[")[0] for p in proposals for name, _, _ in parse_changes(p.description) or ()}
    assert "EMBEDDING_LR" not in touched  # set under an undecidable condition
    assert "EXPORT_RESERVE_S" not in touched
    assert touched, "nothing was mutated"


def test_the_same_seed_replays_the_same_proposals_and_another_seed_differs() -> None:
    first = [p.train_py for p in run_proposals(TRAIN_PY, "tiny", 8, seed=7, check=False)]
    again = [p.train_py for p in run_proposals(TRAIN_PY, "tiny", 8, seed=7, check=False)]
    other = [p.train_py for p in run_proposals(TRAIN_PY, "tiny", 8, seed=8, check=False)]

    assert first == again
    assert first != other


def test_a_kept_change_tends_to_be_pushed_further_the_same_way() -> None:
    agent = OfflineAgent()
    base = AgentContext(program="", train_py=TRAIN_PY, profile="tiny")
    first = agent.propose(base.model_copy(update={"trial_index": 0}))
    while len(parse_changes(first.description) or ()) != 1:  # find a single-knob proposal to keep
        base = base.model_copy(update={"trial_index": base.trial_index + 1})
        first = agent.propose(base)
    ((name, old, new),) = parse_changes(first.description) or ()
    kept = HistoryRow(trial_id="t1", status="ok", decision="keep", description=first.description)

    follow_ups = 0
    for index in range(1, 21):
        ctx = AgentContext(
            program="", train_py=first.train_py, profile="tiny", trial_index=index, history=(kept,)
        )
        changes = parse_changes(agent.propose(ctx).description) or ()
        if len(changes) == 1 and changes[0][0] == name and changes[0][1] == pytest.approx(new):
            assert (changes[0][2] - new) * (new - old) > 0, "a follow-up must continue in the kept direction"
            follow_ups += 1

    assert follow_ups >= 5, f"only {follow_ups} of 20 proposals followed up the kept change"


def test_a_file_without_hyperparameters_is_fatal_for_the_offline_agent() -> None:
    ctx = AgentContext(program="", train_py="import os\nSEED = int(os.environ['S'])\nprint('hi')\n")

    with pytest.raises(AgentFatal, match="no numeric UPPER_CASE"):
        OfflineAgent().propose(ctx)


def test_a_change_that_crashed_on_its_own_is_not_proposed_again_even_paired() -> None:
    crashed = HistoryRow(
        trial_id="t0", status="crash", decision="crash", description="DEVICE_BATCH_SIZE 16 -> 32"
    )
    agent = OfflineAgent()

    for index in range(1, 31):
        ctx = AgentContext(
            program="", train_py=TRAIN_PY, profile="tiny", trial_index=index, history=(crashed,)
        )
        changes = parse_changes(agent.propose(ctx).description) or ()
        assert ("DEVICE_BATCH_SIZE", 16.0, 32.0) not in changes


def test_when_every_move_was_tried_it_still_proposes_a_valid_one() -> None:
    source = "DEPTH = 3  # blocks\n"
    history = tuple(
        HistoryRow(trial_id=f"t{i}", status="ok", decision="discard", description=d)
        for i, d in enumerate(["DEPTH 3 -> 4", "DEPTH 3 -> 2"])
    )

    proposal = OfflineAgent().propose(AgentContext(program="", train_py=source, history=history))

    assert proposal.description in {"DEPTH 3 -> 4", "DEPTH 3 -> 2"}
    check_proposal(source, proposal, "tiny")
