"""The baseline train.py stays one readable file that honours the TRAIN-side contract on its face.

Checked from the source alone (nothing is imported or run, as the harness treats train.py):
- the banner sections the agent navigates by are present, in order, with the titles that state the rule;
- hyperparameters are UPPER_CASE module globals, each assigned once with a trailing comment, so a human
  reads them at a glance and the offline agent can find the literal in effect for each profile;
- configuration comes from the environment the controller sets (the names in sandbox.constants) and
  nothing else: no CLI flags, no configurator;
- it imports from prepare only what the contract offers train.py, and never reaches for the
  validation split or the metric: it cannot score itself, and never prints a val_bpb;
- it writes the artifact under the contract's file name.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from harness.agents.knobs import find_knobs
from sandbox.constants import ARTIFACT_FILE, ENV_OUT, ENV_SEED

TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"
SECTIONS = (
    "Hyperparameters (edit freely)",
    "Model",
    "Optimizer",
    "Training loop",
    "Export (keep the contract)",
)
# What prepare.py offers train.py (docs/ARCHITECTURE.md, program.md). The rest is the evaluator's.
CONTRACT_IMPORTS = {
    "PROFILE",
    "MAX_SEQ_LEN",
    "VOCAB_SIZE",
    "TIME_BUDGET",
    "BOS_TOKEN",
    "make_dataloader",
    "load_tokenizer",
    "load_token_bytes",
    "export_model",
}
EVALUATOR_ONLY = {"eval_rows", "evaluate_bpb", "load_split_tokens", "unigram_bpb", "EVAL_TOKENS"}


@pytest.fixture(scope="module")
def source() -> str:
    return TRAIN_PY.read_text()


@pytest.fixture(scope="module")
def tree(source: str) -> ast.Module:
    return ast.parse(source)


def banners(source: str) -> list[tuple[int, str]]:
    """(line number, title) of each `# ----` / `# <title>` / `# ----` banner, in order (1-based lines)."""
    lines = source.splitlines()
    return [
        (i + 1, lines[i][2:].strip())
        for i in range(1, len(lines) - 1)
        if re.fullmatch(r"# -{20,}", lines[i - 1]) and re.fullmatch(r"# -{20,}", lines[i + 1])
    ]


def section_lines(source: str, title: str) -> range:
    """The line numbers from a banner to the next one (or the end of the file)."""
    starts = banners(source)
    index = [t for _, t in starts].index(title)
    end = starts[index + 1][0] if index + 1 < len(starts) else source.count("\n") + 2
    return range(starts[index][0], end)


def test_banner_sections_are_present_in_order(source: str) -> None:
    assert [title for _, title in banners(source)] == list(SECTIONS)


def test_hyperparameters_are_commented_upper_case_globals_assigned_once(source: str) -> None:
    section = section_lines(source, SECTIONS[0])
    in_section = [n for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.lineno in section]
    names = [t.id for n in in_section for t in n.targets if isinstance(t, ast.Name)]
    assert len(names) >= 15, f"expected the hyperparameters here, found {names}"
    assert all(name.isupper() for name in names), names
    assert len(names) == len(set(names)), f"assigned more than once: {names}"
    comments = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    uncommented = [
        name
        for name, n in zip(names, in_section, strict=True)
        if not any(n.lineno <= line <= (n.end_lineno or n.lineno) for line in comments)
    ]
    # OUT_DIR and SEED come from the environment; their names say what they are.
    assert set(uncommented) <= {"OUT_DIR", "SEED"}, (
        f"hyperparameters without a trailing comment: {uncommented}"
    )


@pytest.mark.parametrize("profile", ["tiny", "gpu"])
def test_the_offline_agent_finds_the_size_knobs_for_each_profile(source: str, profile: str) -> None:
    knobs = {k.name for k in find_knobs(source, profile)}
    assert {"DEPTH", "ASPECT_RATIO", "TOTAL_BATCH_SIZE", "MATRIX_LR", "WARMDOWN_RATIO"} <= knobs


def test_configuration_comes_only_from_the_controllers_environment(tree: ast.Module, source: str) -> None:
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"argparse", "sys", "click", "typer", "fire"}, imported
    env_reads = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and ast.unparse(node.func) in ("os.environ.get", "os.getenv")
    }
    assert env_reads == {ENV_OUT, ENV_SEED}


def test_imports_from_prepare_only_the_contract(tree: ast.Module) -> None:
    from_prepare = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "prepare"
        for alias in node.names
    }
    plain = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert "prepare" not in plain, "import names from prepare explicitly, so the contract is visible"
    assert from_prepare and from_prepare <= CONTRACT_IMPORTS, from_prepare - CONTRACT_IMPORTS
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not used & EVALUATOR_ONLY


def test_reads_only_the_train_split(tree: ast.Module) -> None:
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "make_dataloader"
    ]
    assert calls, "the baseline trains on make_dataloader batches"
    for call in calls:
        assert isinstance(call.args[0], ast.Constant) and call.args[0].value == "train", ast.unparse(call)


def test_never_prints_a_val_bpb(tree: ast.Module) -> None:
    prints = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "print"]
    assert prints, "the summary block is printed"
    assert not [ast.unparse(p) for p in prints if "val_bpb" in ast.unparse(p) or "bpb" in ast.unparse(p)]


def test_exports_under_the_contract_file_name(source: str) -> None:
    section = section_lines(source, SECTIONS[-1])
    export = "\n".join(source.splitlines()[section.start - 1 : section.stop - 1])
    assert re.search(rf'export_model\(model, OUT_DIR / "{re.escape(ARTIFACT_FILE)}"\)', export)
