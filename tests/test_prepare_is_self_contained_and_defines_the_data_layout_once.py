"""Invariant: prepare.py is the self-contained frozen contract, and the one definition of the data layout.

What it protects: prepare.py once imported sandbox while sandbox imported it (a package-level cycle), and
every TRAIN import of it loaded the data build pipeline and the 715-line corpus grammar. Now it imports
nothing of this project anywhere in its source (its CLI hands off to sandbox/data by module name), stays
short enough to read in one sitting (<= 450 lines), and defines the data folder's layout names that
sandbox/constants.py re-exports: a second copy could drift from what train.py and the evaluator read.
sandbox/constants.py reads them from prepare only on first use, so importing it still loads no torch
(the controller's light commands never need it). Checked on the source, in fresh interpreters, and
through the CLI's error path.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import prepare

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "prepare.py"
PROJECT = ("harness", "sandbox")


def test_prepare_imports_nothing_of_the_project() -> None:
    tree = ast.parse(PREPARE.read_text())
    imported = set()
    for node in ast.walk(tree):  # every import, at any depth (inside functions too)
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else (node.module or "").split(".")[0])
    assert imported.isdisjoint({*PROJECT, "."}), imported & {*PROJECT, "."}
    # The only mention of the project's modules is the CLI's hand-off, looked up by name at run time.
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    in_main = {id(n) for n in ast.walk(main)}
    named = [
        (n.value, id(n) in in_main)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.split(".")[0] in PROJECT
    ]
    assert named == [("sandbox.data.build", True)]


def test_prepare_fits_in_450_lines() -> None:
    assert len(PREPARE.read_text().splitlines()) <= 450


def test_constants_re_exports_prepares_layout_names_without_importing_torch() -> None:
    code = (
        "import sys, sandbox.constants as C\n"
        "print('torch' in sys.modules)\n"
        "names = sorted(C._FROM_PREPARE)\n"
        "values = [getattr(C, n) for n in names]\n"
        "import prepare\n"
        "print(all(getattr(C, n) is getattr(prepare, n) for n in names), len(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True", "8"]
    # The names mypy checks (the TYPE_CHECKING re-exports) are exactly the ones read at run time.
    tree = ast.parse((REPO / "sandbox" / "constants.py").read_text())
    typed = {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "prepare"
        for alias in node.names
    }
    import sandbox.constants as C

    assert typed == set(C._FROM_PREPARE)
    assert all(isinstance(getattr(prepare, name), str) for name in typed)


def test_python_prepare_py_hands_errors_and_exit_status_through(tiny_data: Path) -> None:
    """The CLI's hand-off keeps today's behaviour: a refusal is a logged error and exit status 1."""
    out = subprocess.run(
        [sys.executable, "prepare.py", "--profile", "gpu", "--data-dir", str(tiny_data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "holds the tiny profile's data; refusing to overwrite it" in out.stderr
    usage = subprocess.run(
        [sys.executable, "prepare.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: prepare.py")
    for flag in ("--profile", "--data-dir", "--num-shards", "--base-url"):
        assert flag in usage.stdout
