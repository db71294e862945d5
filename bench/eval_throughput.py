"""Evaluator throughput: the exported graph, loaded the way the evaluator loads it, against eager PyTorch.

    python bench/eval_throughput.py [--profile tiny|gpu] [--device cpu|cuda] [--batches N] [--json]

Builds the baseline train.py's GPT (randomly initialised: nothing is trained), exports it with
``prepare.export_model``, loads the artifact with ``sandbox.incontainer.program.load_artifact`` (validation,
functionalization unless the graph is already functional, device move) and runs the same rows, at the profile's evaluation batch size,
through both the loaded graph and the eager model, interleaved batch by batch so that drift in the
machine's load hits both sides alike. Reports tokens/s of each and ratio = graph / eager (goal >= 0.95).

The model class comes from the repository's baseline train.py: its top-level function and class
definitions and literal constants are executed, nothing else (train.py trains at import). This is a
developer tool run on the baseline, never on a candidate; the evaluator itself never imports train.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.eval_throughput")

# train.py's tiny-profile override and its defaults: (depth, aspect ratio, head dim)
SHAPES = {"tiny": (3, 64, 64), "gpu": (8, 64, 128)}


def baseline_model_namespace(train_py: Path) -> dict[str, Any]:
    """Execute only train.py's top-level defs, classes and literal constants; return that namespace."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    tree = ast.parse(train_py.read_text(), filename=str(train_py))
    keep: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            keep.append(node)
        elif isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id.isupper() for t in node.targets
        ):
            try:
                ast.literal_eval(node.value)
            except ValueError:
                continue
            keep.append(node)
    namespace: dict[str, Any] = {"torch": torch, "nn": nn, "F": F, "math": math, "__name__": "baseline_train"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(train_py), "exec"), namespace)
    if "GPT" not in namespace:
        raise SystemExit(f"{train_py} defines no GPT class; the benchmark needs the baseline model")
    return namespace


def build_model(profile: Any, device: str) -> Any:
    import torch

    ns = baseline_model_namespace(REPO / "train.py")
    depth, aspect, head_dim = SHAPES[profile.name]
    dim = math.ceil(depth * aspect / head_dim) * head_dim
    torch.manual_seed(0)
    with torch.device(device):
        model = ns["GPT"](profile.vocab_size, profile.max_seq_len, depth, dim, dim // head_dim)
    for p in model.parameters():  # train.py zero-initialises the output projections; random is more typical
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def measure(profile_name: str, device: str, batches: int, data: Path | None) -> dict[str, Any]:
    os.environ["AUTORESEARCH_PROFILE"] = profile_name  # prepare's module constants follow the profile
    import torch

    import prepare
    from sandbox.incontainer import archive, graph, program

    profile = prepare.PROFILES[profile_name]
    B, T = profile.eval_batch_size, profile.max_seq_len
    model = build_model(profile, device)
    if data is not None:
        rows = prepare.eval_rows(data, n_tokens=batches * B * T, seq_len=T)[:, :-1]
    else:
        rows = torch.randint(
            0, profile.vocab_size, (batches * B, T), generator=torch.Generator().manual_seed(0)
        )
    rows = rows.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prepare.export_model(model, Path(tmp) / "model.pt2")
        export_s = time.perf_counter() - t0
        contract = graph.Contract(seq_len=T, vocab_size=profile.vocab_size, max_batch=B)
        t0 = time.perf_counter()
        loaded = program.load_artifact(Path(tmp), contract, archive.LIMITS[profile.name], device)
        load_s = time.perf_counter() - t0
    graph_fn = graph.as_logits_fn(loaded.program)

    def eager_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    def timed(fn: Any, x: torch.Tensor) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(x).float()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    first = rows[:B]
    max_diff = float((graph_fn(first).float() - eager_fn(first).float()).abs().max())
    for fn in (graph_fn, eager_fn):  # warm-up: allocator, kernels, lazy init
        timed(fn, first)
    times: dict[str, list[float]] = {"graph": [], "eager": []}
    for i in range(batches):
        x = rows[i * B : (i + 1) * B]
        order = ("graph", "eager") if i % 2 == 0 else ("eager", "graph")  # alternate who goes first
        for name in order:
            times[name].append(timed(graph_fn if name == "graph" else eager_fn, x))
    tokens = B * T
    result: dict[str, Any] = {
        "profile": profile_name,
        "device": device,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "batch_size": B,
        "seq_len": T,
        "batches": batches,
        "params": loaded.param_count,
        "tokens_per_s_graph": tokens * batches / sum(times["graph"]),
        "tokens_per_s_eager": tokens * batches / sum(times["eager"]),
        "median_batch_s_graph": statistics.median(times["graph"]),
        "median_batch_s_eager": statistics.median(times["eager"]),
        "best_batch_s_graph": min(times["graph"]),  # least disturbed by other load on a shared machine
        "best_batch_s_eager": min(times["eager"]),
        "max_abs_logit_diff": max_diff,
        "functionalized": loaded.functionalized,
        "export_s": export_s,
        "load_s": load_s,
    }
    result["ratio"] = result["tokens_per_s_graph"] / result["tokens_per_s_eager"]
    result["ratio_best"] = result["best_batch_s_eager"] / result["best_batch_s_graph"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per side")
    parser.add_argument("--data", type=Path, default=None, help="use eval_rows from this data folder")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    r = measure(args.profile, device, args.batches, args.data)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0
    print(
        f"profile {r['profile']} on {r['device']} ({r['threads']} threads), torch {r['torch_version']}, "
        f"{r['params'] / 1e6:.2f}M params, batch {r['batch_size']} x {r['seq_len']}, {r['batches']} batches"
    )
    print(f"{'':8}{'tokens/s':>14}{'median batch s':>16}{'best batch s':>14}")
    for side in ("graph", "eager"):
        print(
            f"{side:8}{r[f'tokens_per_s_{side}']:>14,.0f}{r[f'median_batch_s_{side}']:>16.4f}"
            f"{r[f'best_batch_s_{side}']:>14.4f}"
        )
    print(
        f"ratio graph/eager: {r['ratio']:.3f} (best batches: {r['ratio_best']:.3f}; goal >= 0.95); "
        f"max |logit diff| {r['max_abs_logit_diff']:.2e}; "
        f"export {r['export_s']:.1f}s, load {r['load_s']:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
