"""A set cancel event stops a trial at whatever step it is in, cleans up, and decides nothing.

Property: `run_trial(spec, cancel)` raises `TrialCancelled` promptly once `cancel` is set, whether
TRAIN or EVAL is running or nothing has started yet; what the step started is killed and reaped,
and no verdict.json is written (a cancelled trial is not a result). TRAIN's side, on every engine,
is a check of tests/test_engine_conformance.py; these are the other steps, on the local engine.
Attack defeated (an accident, really): a Ctrl-C that leaves an evaluator or a candidate running on
the host, or records a half-run trial as a verdict.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import constants as C
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import TrialCancelled, TrialSpec

MakeSpec = Callable[..., TrialSpec]


def _running(marker: str) -> list[str]:
    """Pids of live processes whose command line holds `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                continue
    return found


def test_cancel_during_eval_kills_the_evaluator(make_spec: MakeSpec, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (data / name).mkdir(parents=True)
        (data / name / "placeholder").write_text(name)
    exporter = tmp_path / "exporter.py"
    exporter.write_text(
        "import os\nopen(os.path.join(os.environ['AUTORESEARCH_OUT'], 'model.pt2'), 'w').close()\n"
    )
    slow_evaluator = tmp_path / "slow_evaluator.py"
    slow_evaluator.write_text("import time\nprint('evaluating', flush=True)\ntime.sleep(10**6)\n")
    sandbox = LocalSandbox(data_dir=data, evaluator=[sys.executable, str(slow_evaluator)])
    spec = make_spec(exporter, eval_timeout_s=120)
    cancel = threading.Event()

    def cancel_once_eval_runs() -> None:
        deadline = time.monotonic() + 60
        while not _running(str(slow_evaluator)) and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel.set()

    watcher = threading.Thread(target=cancel_once_eval_runs, daemon=True)
    watcher.start()
    with pytest.raises(TrialCancelled, match="cancelled"):
        sandbox.run_trial(spec, cancel)
    watcher.join()
    assert (spec.trial_dir / C.TRAIN_LOG_FILE).exists()  # TRAIN ran: the cancel came in EVAL
    assert _running(str(slow_evaluator)) == []
    assert not (spec.trial_dir / C.VERDICT_FILE).exists()
    assert not (spec.trial_dir / "local" / "out").exists()  # the cleanup ran


def test_an_event_set_before_the_trial_runs_nothing(make_spec: MakeSpec, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (data / name).mkdir(parents=True)
        (data / name / "placeholder").write_text(name)
    cancel = threading.Event()
    cancel.set()
    spec = make_spec("sleeper")
    with pytest.raises(TrialCancelled):
        LocalSandbox(data_dir=data).run_trial(spec, cancel)
    assert not (spec.trial_dir / C.TRAIN_LOG_FILE).exists()
    assert not (spec.trial_dir / C.VERDICT_FILE).exists()
