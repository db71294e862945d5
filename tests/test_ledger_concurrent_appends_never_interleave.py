"""Several processes appending to one ledger (and one results.tsv) never interleave, lose or
duplicate a row, and the chain still verifies: the design that lets `--workers N` share a run.

Four processes append fifty rows each, started together behind a barrier. Rows of 50 kB widen each
append's read-hash-write window enough that, with the lock removed, the appends do collide (two
rows with one index, or a torn line): this test fails without the lock. The processes are forked
for a fast start; each builds its own Ledger and FileLock, as separate controllers would.

`--workers N` runs its workers as threads of one controller, sharing one Ledger and one
ResultsFile object: the second test runs the same appends from four threads through one of each.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.records.chain import Ledger, verify
from harness.records.results import HEADER, ResultRow, ResultsFile

PROCS = 4
ROWS = 50


def _worker(folder: str, worker: int, barrier: Any) -> None:
    _append(Ledger(Path(folder) / "ledger.jsonl"), ResultsFile(Path(folder) / "results.tsv"), worker, barrier)


def _append(ledger: Ledger, results: ResultsFile, worker: int, barrier: Any) -> None:
    barrier.wait()
    for i in range(ROWS):
        ledger.append({"worker": worker, "seq": i, "description": f"w{worker}-{i} " + "x" * 50_000})
        results.append(
            [
                ResultRow(
                    commit=f"{worker:07d}",
                    val_bpb=1.0 + i / 1000,
                    memory_gb=1.0,
                    status="discard",
                    description=f"w{worker}-{i}",
                )
            ]
        )


def test_four_processes_fifty_rows_each(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, barrier)) for w in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * PROCS
    _check(tmp_path)


def test_four_threads_sharing_one_ledger_object(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    results = ResultsFile(tmp_path / "results.tsv")
    barrier = threading.Barrier(PROCS)
    with ThreadPoolExecutor(max_workers=PROCS) as pool:
        futures = [pool.submit(_append, ledger, results, w, barrier) for w in range(PROCS)]
        for future in futures:
            future.result(timeout=120)  # re-raises a thread's failure
    _check(tmp_path)


def _check(tmp_path: Path) -> None:
    result = verify(tmp_path / "ledger.jsonl")
    assert result.ok, result.bad
    assert result.rows == PROCS * ROWS
    rows = Ledger(tmp_path / "ledger.jsonl").rows()
    assert [r["index"] for r in rows] == list(range(PROCS * ROWS))
    pairs = Counter((r["worker"], r["seq"]) for r in rows)
    assert set(pairs) == {(w, i) for w in range(PROCS) for i in range(ROWS)}
    assert max(pairs.values()) == 1
    for w in range(PROCS):  # each worker's rows stay in its own order
        assert [r["seq"] for r in rows if r["worker"] == w] == list(range(ROWS))

    lines = (tmp_path / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER and lines.count(HEADER) == 1
    assert len(lines) == 1 + PROCS * ROWS
    assert len(ResultsFile(tmp_path / "results.tsv").read()) == PROCS * ROWS
