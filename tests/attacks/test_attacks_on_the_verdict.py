"""Attacks on the verdict itself: claims, forged reports, patched metrics and patched clocks never
become a score, and the controller's clock, not the candidate's, ends every run.

Properties, each with the attack that would break it (tests/attacks/corpus/NAME.py):
- only the evaluator's report scores: a printed, written or junk-backed claim is kept for the audit
  and nothing else (forged_summary, forged_artifact);
- the metric cannot be patched from TRAIN: monkeypatching prepare in process changes nothing outside
  it, and no file the evaluator executes can be written; the report's hashes of prepare.py and of
  the evaluator's sources are the image's (patch_metric);
- the controller owns the clock: a candidate whose clocks are slowed is stopped by SIGTERM at the
  budget (patch_time); one that traps SIGTERM is SIGKILLed after the grace (ignore_sigterm); either
  way the verdict is timeout and nothing of the trial is left on the engine.
"""

from __future__ import annotations

import hashlib
import json

import docker
import pytest

from sandbox import constants as C
from tests.attacks.conftest import KILL_GRACE_S, REPO, TIME_BUDGET_S, AttackResult

pytestmark = pytest.mark.docker

REFUSED = {"EROFS", "EACCES", "EPERM"}
EXPORT_BUDGET_S = 300  # patch_metric imports torch and exports: not a test of the clock (conftest._budgets)
# What the trainer image holds of the evaluator besides prepare.py: the whole in-container zone.
EVALUATOR_FILES = (
    "sandbox/__init__.py",
    *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "sandbox" / "incontainer").glob("*.py")),
)
_IMAGE_HASHES = f"""
import hashlib, json, pathlib
app = pathlib.Path({C.CONTAINER_APP!r})
names = ["prepare.py", *{EVALUATOR_FILES!r}]
print(json.dumps({{n: hashlib.sha256((app / n).read_bytes()).hexdigest() for n in names}}))
"""


def _image_hashes(client: docker.DockerClient, image: str) -> dict[str, str]:
    """SHA-256 of prepare.py and the evaluator's sources as `image` holds them, read by a fresh container."""
    out = client.containers.run(
        image,
        ["python", "-I", "-S", "-c", _IMAGE_HASHES],
        network_mode="none",
        read_only=True,
        user=f"{C.CONTAINER_UID}:{C.CONTAINER_GID}",
        remove=True,
    )
    hashes: dict[str, str] = json.loads(out)
    return hashes


def _train_exit_code(attack: AttackResult) -> int:
    state = json.loads((attack.trial_dir / C.TRAIN_STATE_FILE).read_text())["State"]
    return int(state["ExitCode"])


def _nothing_left(client: docker.DockerClient, attack: AttackResult) -> None:
    selector = {"label": f"{C.LABEL_TRIAL}={attack.trial_id}"}
    assert client.containers.list(all=True, filters=selector) == [], "a container of the trial is left"
    assert client.volumes.list(filters=selector) == [], "a volume of the trial is left"


@pytest.mark.attack("forged_summary")
def test_printed_or_written_claims_never_score(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    assert attack.val_bpb is None
    assert "no model.pt2" in attack.reason
    assert attack.verdict["report"] is None  # the evaluator never ran: nothing to score
    assert attack.verdict["claimed_val_bpb"] == pytest.approx(0.0001)  # seen, recorded, ignored


@pytest.mark.attack("forged_artifact")
def test_a_junk_artifact_with_a_printed_score_is_rejected(attack: AttackResult) -> None:
    attack.assert_contained("rejected")
    assert attack.val_bpb is None
    assert attack.verdict["claimed_val_bpb"] == pytest.approx(0.0001)
    assert attack.report["status"] == "rejected"
    assert str(attack.report["check"]).startswith("artifact:"), attack.report["check"]
    assert attack.verdict["images"]["trainer"].startswith("sha256:")


@pytest.mark.attack("patch_metric", time_budget_s=EXPORT_BUDGET_S)
def test_patching_the_metric_from_train_changes_nothing_the_evaluator_runs(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    attack.assert_contained("ok")
    seen = attack.json_line("ATTACK ")
    assert seen["in_process"]["evaluate_bpb_patched"] is True  # the in-process patch took ...
    assert seen["in_process"]["forged_val_bpb"] == pytest.approx(0.0001)
    assert attack.verdict["claimed_val_bpb"] == pytest.approx(0.0001)  # ... and was printed ...
    assert attack.val_bpb != pytest.approx(0.0001)  # ... and the evaluator scored the model itself
    writes = seen["writes"]
    assert len(writes) >= 10, writes
    opened = {what: err for what, err in writes.items() if err not in REFUSED}
    assert not opened, f"writes that were not refused: {opened}"
    hashes = attack.report["hashes"]
    image_hashes = _image_hashes(docker_client, attack.verdict["images"]["trainer"])  # the trial's image
    assert hashes["prepare.py"] == image_hashes["prepare.py"]
    assert hashes["prepare.py"] == hashlib.sha256((REPO / "prepare.py").read_bytes()).hexdigest(), (
        "the trainer image's prepare.py is not the repository's: rebuild it (make images)"
    )
    assert set(hashes) - {"prepare.py", "evaluator", "data"} == set(EVALUATOR_FILES)  # the whole zone
    for name in EVALUATOR_FILES:
        assert hashes[name] == image_hashes[name], name


@pytest.mark.attack("patch_time")
def test_a_slowed_clock_does_not_buy_time(attack: AttackResult, docker_client: docker.DockerClient) -> None:
    attack.assert_contained("timeout")
    assert "SIGTERM" in attack.reason
    assert _train_exit_code(attack) == 128 + 15  # died of the budget's SIGTERM, before the grace
    assert attack.verdict["timings"]["train_wall_s"] >= TIME_BUDGET_S
    ticks = [json.loads(line) for line in attack.lines("ATTACK ")]
    assert ticks, attack.log()[-2000:]
    last = ticks[-1]
    # The patch held: its own clock saw a fraction of the time that really passed.
    assert len(ticks) >= 2 and last["own_elapsed"] < last["real_elapsed"] / 10, last
    assert "exported_after_real_s" not in attack.log()
    _nothing_left(docker_client, attack)


@pytest.mark.attack("ignore_sigterm")
def test_trapping_sigterm_ends_in_sigkill_after_the_grace(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    attack.assert_contained("timeout")
    assert "killed" in attack.reason and "grace" in attack.reason
    assert _train_exit_code(attack) == 128 + 9
    assert attack.verdict["timings"]["train_wall_s"] >= TIME_BUDGET_S + KILL_GRACE_S
    signals = [json.loads(line) for line in attack.lines("ATTACK ") if '"signal"' in line]
    assert signals and signals[0]["signal"] == "SIGTERM", attack.log()[-2000:]  # received, survived
    assert "exported_after_s" not in attack.log()
    _nothing_left(docker_client, attack)
