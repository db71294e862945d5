"""The trial folder and the host-side steps every backend shares.

One folder per trial holds everything an auditor needs: the candidate as it ran (a copy, so editing
the original later changes nothing), the capped logs, the engine's view of each container, the
evaluator's report verbatim, the controller's own step log and `verdict.json`. Both backends build
their verdict here, so the claimed score is parsed, and the files are named, the same way.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sandbox import constants as C
from sandbox.compute import ComputeReport
from sandbox.constants import Status
from sandbox.incontainer.fileio import atomic_write
from sandbox.report import EvalReport
from sandbox.verdict import DataMissing, TrialSpec, Verdict, claimed_val_bpb

logger = logging.getLogger(__name__)

DATA_HINT = "run `make data` (or `python prepare.py --profile {profile}`)"


def resolve_data_dir(data_dir: Path | None, profile: str) -> Path:
    """The host folder with the profile's prepared data; raises DataMissing when it is not prepared."""
    if data_dir is None:
        import prepare  # trusted; lazily, because it imports torch

        data_dir = prepare.data_dir(profile)
    data_dir = Path(data_dir).resolve()
    missing = [
        name
        for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME)
        if not (data_dir / name).is_dir() or not any((data_dir / name).iterdir())
    ]
    if missing:
        raise DataMissing(
            f"the {profile} data at {data_dir} lacks {', '.join(missing)}/: {DATA_HINT.format(profile=profile)}"
        )
    return data_dir


def stage_candidate(candidate: Path, trial_dir: Path) -> Path:
    """Copy the candidate into the trial folder; the copy is what runs and what the audit keeps."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    target = (trial_dir / C.CANDIDATE_FILE).resolve()
    if candidate.resolve() != target:
        shutil.copyfile(candidate, target)
    target.chmod(0o644)  # readable by the containers' unprivileged uid, writable by nobody there
    return target


def keep_tail(data: bytes, limit: int, dropped: int = 0) -> bytes:
    """At most `limit` bytes of a log, keeping the end (where the error usually is) and saying so.

    `dropped` counts bytes the caller already discarded from the front of `data`.
    """
    if len(data) <= limit and not dropped:
        return data
    dropped += max(0, len(data) - limit)
    marker = f"[log capped at {limit} bytes: {dropped} earlier bytes dropped]\n".encode()
    return marker + data[len(data) - min(len(data), limit - len(marker)) :]


@contextmanager
def trial_log(path: Path) -> Iterator[None]:
    """Copy this thread's sandbox log records, INFO and up, into the trial folder while the trial runs.

    The trial log is the audit trail, so it gets INFO even when the process logs at WARNING; the
    records that only the trial log wants are kept off the process's own handlers.
    """
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    sandbox_logger = logging.getLogger("sandbox")
    previous = sandbox_logger.level
    wanted = sandbox_logger.getEffectiveLevel()
    quiet: list[logging.Handler] = []
    if wanted > logging.INFO:
        sandbox_logger.setLevel(logging.INFO)
        quiet = list(logging.getLogger().handlers)
    keep_quiet = _BelowLevel("sandbox", wanted)
    for other in quiet:
        other.addFilter(keep_quiet)
    sandbox_logger.addHandler(handler)
    try:
        yield
    finally:
        sandbox_logger.removeHandler(handler)
        sandbox_logger.setLevel(previous)
        for other in quiet:
            other.removeFilter(keep_quiet)
        handler.close()


class _BelowLevel(logging.Filter):
    """Drops records of one logger tree below a level (what the process asked its handlers for)."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__()
        self._prefix, self._level = name, level

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == self._prefix or record.name.startswith(self._prefix + ".")
        return not (ours and record.levelno < self._level)


def finish(
    spec: TrialSpec,
    *,
    backend: str,
    status: Status,
    val_bpb: float | None,
    reason: str,
    train_log: bytes,
    timings: dict[str, float],
    peak_memory_bytes: int | None,
    images: dict[str, str],
    logs: dict[str, Path],
    report: EvalReport | None,
    compute: ComputeReport | None = None,
) -> Verdict:
    """Build the verdict, write verdict.json into the trial folder, and return it."""
    verdict = Verdict(
        trial_id=spec.trial_id,
        status=status,
        val_bpb=val_bpb if status is Status.OK else None,
        reason=reason,
        claimed_val_bpb=claimed_val_bpb(train_log.decode("utf-8", errors="replace")),
        timings={k: round(v, 3) for k, v in timings.items()},
        peak_memory_gb=None if peak_memory_bytes is None else round(peak_memory_bytes / 1024**3, 4),
        images=images,
        logs={
            name: str(path)
            for name, path in (
                logs
                | {
                    "candidate": spec.trial_dir / C.CANDIDATE_FILE,
                    "sandbox": spec.trial_dir / C.SANDBOX_LOG_FILE,
                    "audit": spec.trial_dir / C.AUDIT_FILE,
                }
            ).items()
            if path.exists()
        },
        report=report,
        limits=spec.limits.model_dump(mode="json"),
        gpu_ids=list(spec.gpu_ids),
        seed=spec.seed,
        backend=backend,
        compute_share=None if compute is None else compute.share,
        compute=None if compute is None else compute.model_dump(mode="json"),
    )
    atomic_write(spec.trial_dir / C.VERDICT_FILE, verdict.model_dump_json(indent=2) + "\n", durable=False)
    logger.info(
        "trial %s: %s%s %s",
        spec.trial_id,
        status.value,
        f" val_bpb={val_bpb:.6f}" if verdict.val_bpb is not None else "",
        reason,
    )
    return verdict
