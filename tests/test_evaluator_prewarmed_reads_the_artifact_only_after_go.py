"""A pre-warmed evaluator reads the artifact and the validation data only after its go.

Property: `python -m sandbox.incontainer.evaluate --wait-for GO` prepares (imports, hashes, warm-up) and then
neither opens the data folder nor looks at the artifact folder until GO exists; everything it judges
is what the folders hold after the go. The Docker backend starts the evaluator while TRAIN still runs
and creates GO only once TRAIN has exited, so this is what keeps a running candidate from showing the
evaluator one artifact and then swapping in another (a time-of-check to time-of-use race on the
output channel), and keeps validation data out of any process that runs beside a live candidate.
Checked with a data folder and an artifact folder that do not exist while the evaluator waits, then
real data and a non-zip file: the report must name the file (`not_a_zip`). An evaluator that read
either folder before the go would have exited 2 (no data) or reported `missing_artifact`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sandbox.constants import ARTIFACT_FILE, EVALUATOR_MODULE

REPO = Path(__file__).resolve().parents[1]
PREPARED_LINE = "waiting for"  # what the evaluator logs once prepared, before it waits


def test_the_artifact_is_read_only_after_the_go(tmp_path: Path, tiny_data: Path) -> None:
    artifact, data, go = tmp_path / "out", tmp_path / "data", tmp_path / "go"
    report = tmp_path / "report.json"
    args = ["--profile", "tiny", "--artifact", str(artifact), "--report", str(report)]
    args += ["--data", str(data), "--wait-for", str(go)]
    log = (tmp_path / "eval.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", EVALUATOR_MODULE, *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while PREPARED_LINE not in Path(log.name).read_text():
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "the evaluator never finished preparing"
            time.sleep(0.1)
        time.sleep(0.5)  # it is waiting now: give a premature read every chance to happen
        assert proc.poll() is None and not report.exists()

        shutil.copytree(tiny_data, data)
        artifact.mkdir()
        (artifact / ARTIFACT_FILE).write_bytes(b"written by TRAIN after the evaluator was ready")
        go.touch()
        assert proc.wait(timeout=240) == 0, Path(log.name).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    result = json.loads(report.read_text())
    assert result["status"] == "rejected" and result["check"] == "artifact:not_a_zip", result["reason"]
    assert result["timings"]["wait"] >= 0.5
    assert result["timings"]["prepare"] > 0
