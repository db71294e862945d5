"""The trusted evaluator: ``python -m sandbox.evaluate --profile P --artifact DIR --report FILE``.

Runs in the EVAL container (or, for the engine-free backend, a plain subprocess). It scores the
candidate's exported graph with the frozen metric and writes one JSON report; the controller reads
the verdict from that report and from nothing the candidate printed.

What is deliberate:
  * It never imports candidate code: only ``prepare`` (frozen, trusted) and ``sandbox.*``. The graph
    is loaded by ``sandbox.artifact`` (no pickle, operator allow-list, signature contract) and must
    pass ``sandbox.probes`` (causality, row independence, determinism) before it is scored.
  * Statuses are values: a bad artifact yields a report with ``status: rejected`` and a reason, and
    exit code 0. Exit code 2 (``EVALUATOR_ERROR_EXIT``) means the evaluator itself could not run
    (no data, corrupted data, CUDA requested but absent); the report is then not written.
  * Any exception raised while torch runs the candidate's graph is the candidate's fault (its ops, its
    shapes, its memory): it becomes a rejection naming the exception (``runtime:graph_error``). Any
    other exception once the artifact is being judged is reported as ``internal:<type>`` with the
    traceback in the log: the evaluator is trusted, so what breaks it is the artifact, but the check
    name keeps an evaluator bug distinguishable in the ledger. A hard crash (segfault, OOM kill)
    leaves no report; the controller then rejects the artifact on the exit status.
  * The report is written atomically (temporary file + rename) and records the secret probe plan
    only after the probes ran, plus hashes of prepare.py, of the evaluator's sources and of the data
    manifest, so a result can be traced to exactly what produced it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import prepare
from sandbox import artifact, probes
from sandbox.constants import EVALUATOR_ERROR_EXIT, TOKENIZER_DIRNAME, VAL_DIRNAME, Status

log = logging.getLogger(__name__)

EVALUATOR_SOURCES = ("evaluate.py", "artifact.py", "probes.py", "constants.py")
# Exceptions torch raises while running a graph: bad shapes, bad indices, out of memory, failed asserts.
GRAPH_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError, ArithmeticError)


class EvaluatorError(Exception):
    """The evaluator cannot do its job (infrastructure); never the candidate's fault."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_hashes() -> dict[str, str]:
    """SHA-256 of the evaluator's own sources; ``evaluator`` combines them in a fixed order."""
    here = Path(__file__).resolve().parent
    files = {name: sha256_file(here / name) for name in EVALUATOR_SOURCES}
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in files.items()).encode()).hexdigest()
    return {"evaluator": combined, **{f"sandbox/{n}": h for n, h in files.items()}}


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomic: a reader sees the previous report or the complete new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_data(profile: prepare.Profile, data_dir: Path, device: str) -> dict[str, Any]:
    """Everything the metric needs, verified against the data manifest; failures are infrastructure."""
    try:
        manifest_sha = prepare.verify_data(data_dir, subdirs=[VAL_DIRNAME, TOKENIZER_DIRNAME])
        rows = prepare.eval_rows(data_dir, n_tokens=profile.eval_tokens, seq_len=profile.max_seq_len)
        token_bytes = prepare.load_token_bytes(data_dir, device=device)
    except (OSError, ValueError, KeyError, prepare.PrepareError) as e:
        raise EvaluatorError(f"cannot load the {profile.name} validation data from {data_dir}: {e}") from e
    if token_bytes.numel() != profile.vocab_size:
        raise EvaluatorError(
            f"token_bytes has {token_bytes.numel()} entries, the profile's vocab is {profile.vocab_size}"
        )
    unigram = None
    try:  # informational only: from the train split, or as recorded in the manifest
        unigram = prepare.unigram_bpb(data_dir)
    except (OSError, KeyError, TypeError, ValueError, prepare.PrepareError) as e:
        log.warning("unigram_bpb not reported: %s: %s", type(e).__name__, e)
    return {"manifest_sha256": manifest_sha, "rows": rows, "token_bytes": token_bytes, "unigram_bpb": unigram}


def evaluate(
    profile: prepare.Profile | str, artifact_dir: Path, data_dir: Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Validate, load, probe and score one artifact; return the report. Raises only ``EvaluatorError``.

    ``report["check"]`` names what rejected the artifact (``artifact:<check>``, ``probe:<name>``,
    ``runtime:<kind>``), or is None when it was scored: a stable key for tests and dashboards.
    """
    t_start = time.monotonic()
    try:
        profile = prepare.get_profile(profile)
    except ValueError as e:
        raise EvaluatorError(str(e)) from e
    if profile.name not in artifact.LIMITS:
        raise EvaluatorError(f"profile {profile.name!r} has no artifact limits in sandbox/artifact.py")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluatorError("--device cuda was requested but CUDA is not available")
    data_dir = data_dir or prepare.data_dir(profile)
    data = _load_data(profile, data_dir, device)
    report: dict[str, Any] = {
        "status": Status.REJECTED.value,
        "reason": "",
        "check": None,
        "val_bpb": None,
        "tokens_scored": None,
        "bytes_scored": None,
        "unigram_bpb": data["unigram_bpb"],
        "probes": {},
        "probe_plan": None,
        "probe_deviation_nats": {},
        "timings": {},
        "artifact_sha256": None,
        "artifact_bytes": None,
        "param_count": None,
        "ops": {},
        "float_dtypes": [],
        "profile": profile.name,
        "device": device,
        "torch_version": torch.__version__,
        "eval_rows": int(data["rows"].shape[0]),
        "hashes": {
            "prepare.py": sha256_file(Path(prepare.__file__)),
            **source_hashes(),
            "data": data["manifest_sha256"],
        },
    }
    try:
        _judge(report, profile, artifact_dir, data, device)
    except Exception as e:  # the artifact broke the evaluator in a way no check names: still a verdict
        log.exception("unexpected failure while judging the artifact")
        report["check"] = f"internal:{type(e).__name__}"
        report["reason"] = (
            f"the evaluator failed unexpectedly on this artifact ({type(e).__name__}: {str(e)[:500]})"
        )
    if report["check"] is not None:  # rejected: no score survives
        report.update(status=Status.REJECTED.value, val_bpb=None, tokens_scored=None, bytes_scored=None)
    report["timings"]["total"] = round(time.monotonic() - t_start, 4)
    return report


def _judge(
    report: dict[str, Any], profile: prepare.Profile, artifact_dir: Path, data: dict[str, Any], device: str
) -> None:
    """Validate, load, probe, score: fill ``report`` and set ``report["check"]`` on a rejection."""
    timings: dict[str, float] = report["timings"]

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 4)
        return now

    t = time.monotonic()
    contract = artifact.Contract(
        seq_len=profile.max_seq_len, vocab_size=profile.vocab_size, max_batch=profile.eval_batch_size
    )
    try:
        try:
            validated = artifact.validate_artifact(artifact_dir, artifact.LIMITS[profile.name])
        finally:
            t = lap("validate", t)
        report["artifact_sha256"], report["artifact_bytes"] = validated.sha256, validated.size_bytes
        try:
            loaded = artifact.load_program(validated, contract, device)
        finally:
            t = lap("load", t)
    except artifact.ArtifactRejected as e:
        report["check"], report["reason"] = (
            f"artifact:{e.check}",
            f"artifact rejected ({e.check}): {e.message}",
        )
        return
    del validated
    report.update(param_count=loaded.param_count, ops=loaded.ops, float_dtypes=list(loaded.float_dtypes))
    try:
        report["check"], report["reason"] = _probe_and_score(
            loaded, profile, data["rows"], data["token_bytes"], report, lap
        )
    except prepare.NonFiniteLogits as e:
        report["check"], report["reason"] = (
            "runtime:non_finite_logits",
            f"non-finite logits while scoring: {e}",
        )
    except prepare.BadLogits as e:
        report["check"], report["reason"] = "runtime:bad_logits", f"unusable logits while scoring: {e}"
    except GRAPH_ERRORS as e:
        report["check"] = "runtime:graph_error"
        report["reason"] = f"the graph raised {type(e).__name__} while running: {str(e)[:1000]}"
        log.warning("graph failed at run time", exc_info=True)


def _probe_and_score(
    loaded: artifact.LoadedArtifact,
    profile: prepare.Profile,
    rows: torch.Tensor,
    token_bytes: torch.Tensor,
    report: dict[str, Any],
    lap: Any,
) -> tuple[str | None, str]:
    """Probe, then score; fills ``report`` and returns (check, reason), check None when scored."""
    device = str(token_bytes.device)
    state = artifact.snapshot_state(loaded.program)
    logits_fn = artifact.as_logits_fn(loaded.program)
    plan = probes.draw_plan(int(rows.shape[0]), profile.eval_batch_size, profile.max_seq_len)
    x = rows[plan.batch_start : plan.batch_start + plan.batch_size, :-1].to(device)
    t = time.monotonic()
    try:
        results, measured = probes.run_probes(
            logits_fn, x, plan, profile.vocab_size, loaded.low_precision_eps
        )
    finally:
        t = lap("probes", t)
    report["probe_plan"] = plan.to_json()  # revealed only now that the probes have run
    report["probes"] = {k: {"passed": r.passed, "detail": r.detail} for k, r in results.items()}
    report["probe_deviation_nats"] = {k: v if math.isfinite(v) else None for k, v in measured.items()}
    failed = [k for k, r in results.items() if not r.passed]
    if failed:
        return f"probe:{failed[0]}", f"probe {failed[0]} failed: {results[failed[0]].detail}"
    try:
        result = prepare.evaluate_bpb(
            lambda xb: logits_fn(xb).float(), rows.to(device), token_bytes, profile.eval_batch_size
        )
    finally:
        lap("score", t)
    changed = artifact.changed_state(loaded.program, state)
    if changed:
        return "runtime:state_mutation", f"the graph changed its own state while running: {changed[:10]}"
    report.update(
        status=Status.OK.value,
        val_bpb=result.val_bpb,
        tokens_scored=result.tokens_scored,
        bytes_scored=result.total_bytes,
    )
    return None, "scored"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score an exported model.pt2 with the frozen val_bpb metric."
    )
    parser.add_argument("--profile", required=True, choices=sorted(prepare.PROFILES))
    parser.add_argument(
        "--artifact", required=True, type=Path, help="folder holding model.pt2 and nothing else"
    )
    parser.add_argument("--report", required=True, type=Path, help="where to write the JSON report")
    parser.add_argument(
        "--data", type=Path, default=None, help="the profile's data folder (default: prepare.data_dir)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = evaluate(args.profile, args.artifact, args.data, args.device)
    except EvaluatorError as e:
        print(f"evaluator error: {e}", file=sys.stderr)
        return EVALUATOR_ERROR_EXIT
    write_report(args.report, report)
    log.info("%s: %s (val_bpb %s)", report["status"], report["reason"], report["val_bpb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
