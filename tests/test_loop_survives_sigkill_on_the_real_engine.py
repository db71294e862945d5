"""A controller SIGKILLed while a candidate's TRAIN container runs on the real Docker engine leaves an
orphan behind, and running the same `python -m harness run` command again on the same folder
finishes the run with nothing lost and nothing duplicated:

- the ledger verifies and holds exactly the planned trials, each once; results.tsv holds exactly
  the rows the ledger implies, in the same order;
- nothing the dead controller (or the second one) created is left on the engine: the reaper at
  the second start removed the orphans of the dead pid, and the second session cleaned up its own;
- the lineage agrees with the ledger: every row's commit is reachable from the run branch or a
  `refs/autoresearch/discarded/` ref, nothing is left pending, and the killed attempt's commit is
  either re-used by the re-run trial (the default: the trial folder has a `trial.json`, so it is
  run again with the same id and its partial output set aside under `interrupted/`) or, once the
  trial has used up `retries.trial_starts`, abandoned under `refs/autoresearch/orphaned/` while a
  new trial id takes its place (ids are never reused) -- as harness/loop/startup.py documents.

Everything is driven through the real CLI in subprocesses (the property is about a real process
dying, its flock released by the kernel, its containers left running). Containers and volumes are
told apart from those of anything else on the engine by their owner labels (host and pid of the
controller that created them), never by trial id: another run on the same engine uses t0000, t0001
too. A second controller on this host that starts while the orphans exist would reap them too;
the orphan check runs right after the kill to keep that window short.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.records.chain import Ledger
from harness.records.lineage import DISCARDED, ORPHANED, PENDING, Lineage, git_env
from harness.records.results import ResultsFile, format_row
from harness.records.schemas import TrialPlan
from sandbox import constants as C
from sandbox.constants import Decision
from tests.conftest import CANDIDATES

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
    from docker.models.volumes import Volume

REPO = Path(__file__).resolve().parents[1]
REPLAY_DIR = CANDIDATES / "loop_sigkill"
BASELINE = CANDIDATES / "tiny_export.py"
RUN_TAG = "sigkill"
# Bounds, not expected durations: a trial of these candidates takes ~15 s on 2 loaded cores.
START_TIMEOUT_S = 150.0  # until the candidate's TRAIN container runs (baseline trial included)
FINISH_TIMEOUT_S = 240.0  # the resumed session, to the end
POLL_S = 0.1

# The run: one baseline run (no noise estimate: min_delta alone; a warning says so), no
# confirmation runs, one candidate trial. The time budget is a cap, not a duration: the candidates
# export in a few seconds; the cap is generous so that a loaded machine cannot turn the baseline
# into a timeout (a failed baseline stops the run).
CONFIG = f"""\
run_tag = "{RUN_TAG}"
max_trials = 1
seed = 0
[judge]
baseline_repeats = 1
confirm_keeps = false
min_compute_share = 0.0  # crash safety is tested here, not the host: a loaded one must not pause the run
[retries]
sandbox_backoff_s = 1.0
trial_starts = {{trial_starts}}
[limits]
time_budget_s = 30
kill_grace_s = 2
eval_timeout_s = 120
mem_limit_mb = 1024
eval_mem_limit_mb = 2048
output_limit_mb = 16
"""


@dataclass(frozen=True)
class Run:
    """One `python -m harness run` command on a run folder, with its config and logs under `root`."""

    root: Path
    data_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def config(self) -> Path:
        return self.root / "autoresearch.toml"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--config",
            str(self.config),
            "--backend",
            "docker",
            "--profile",
            "tiny",
            "--agent",
            "replay",
            "--replay-dir",
            str(REPLAY_DIR),
            "--train-py",
            str(BASELINE),
            "--run-dir",
            str(self.run_dir),
            "--data-dir",
            str(self.data_dir),
            # The canary's own resume is tested in tests/test_canary_resume_loses_and_duplicates_nothing.py;
            # here the rows are the baseline's and the replayed candidates'.
            "--canary-interval",
            "0",
        ]

    def start(self, session: int) -> subprocess.Popen[bytes]:
        # The controller's configuration comes from the file alone: no AUTORESEARCH_* of the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log(session).open("wb") as log:
            return subprocess.Popen(
                self.argv(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self, session: int) -> Path:
        return self.root / f"session{session}.log"

    def tail(self, session: int, limit: int = 6000) -> str:
        text = self.log(session).read_text(encoding="utf-8", errors="replace")
        return text[-limit:]


# --------------------------------------------------------------------------- the engine, filtered by owner


def owned(labels: dict[str, str] | None, pids: set[int]) -> bool:
    labels = labels or {}
    return (
        labels.get(C.LABEL_APP) == C.LABEL_APP_VALUE
        and labels.get(C.LABEL_OWNER_HOST) == socket.gethostname()
        and labels.get(C.LABEL_OWNER_PID) in {str(p) for p in pids}
    )


def containers_of(client: docker.DockerClient, pids: set[int]) -> list[Container]:
    selector = {"label": f"{C.LABEL_APP}={C.LABEL_APP_VALUE}"}
    # ignore_removed: docker-py inspects each listed container; one that another controller on the
    # engine removes in between would otherwise raise NotFound.
    listed = client.containers.list(all=True, filters=selector, ignore_removed=True)
    return [c for c in listed if owned(c.labels, pids)]


def volumes_of(client: docker.DockerClient, pids: set[int]) -> list[Volume]:
    selector = {"label": f"{C.LABEL_APP}={C.LABEL_APP_VALUE}"}
    return [v for v in client.volumes.list(filters=selector) if owned(v.attrs.get("Labels"), pids)]


def describe(client: docker.DockerClient, pids: set[int]) -> str:
    cs = [f"{c.name} ({c.status})" for c in containers_of(client, pids)]
    vs = [v.name for v in volumes_of(client, pids)]
    return f"containers {cs}, volumes {vs}"


@pytest.fixture
def owners(docker_client: docker.DockerClient) -> Iterator[set[int]]:
    """The pids of the controllers this test starts; whatever they left is removed at teardown
    (only theirs: selected by owner host and pid), after the test has asserted on it."""
    pids: set[int] = set()
    yield pids
    for container in containers_of(docker_client, pids):
        container.remove(force=True, v=True)
    for volume in volumes_of(docker_client, pids):
        volume.remove(force=True)


# --------------------------------------------------------------------------- the lineage, as git sees it


def reachable(lineage: Path, refs: list[str]) -> set[str]:
    out = subprocess.run(
        ["git", f"--git-dir={lineage}", "rev-list", *refs],
        capture_output=True,
        text=True,
        env=git_env(),
        check=True,
    ).stdout
    return set(out.split())


# --------------------------------------------------------------------------- the test


def wait_for_candidate_train(
    client: docker.DockerClient, proc: subprocess.Popen[bytes], run: Run
) -> Container:
    """The running TRAIN container of the session's first candidate trial (the baseline's is skipped)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the first session exited ({proc.returncode}) before its candidate ran:\n{run.tail(1)}"
            )
        for container in containers_of(client, {proc.pid}):
            if container.labels.get(C.LABEL_ROLE) != "train" or container.status != "running":
                continue
            trial_json = run.run_dir / "trials" / container.labels[C.LABEL_TRIAL] / "trial.json"
            plan = TrialPlan.model_validate_json(trial_json.read_text(encoding="utf-8"))
            if plan.kind == "candidate":
                return container
        time.sleep(POLL_S)
    pytest.fail(f"no candidate TRAIN container ran within {START_TIMEOUT_S:.0f} s:\n{run.tail(1)}")


@pytest.mark.docker
@pytest.mark.parametrize(
    "trial_starts",
    [
        pytest.param(3, id="killed-trial-is-rerun"),
        pytest.param(1, id="killed-trial-is-abandoned"),
    ],
)
def test_sigkilled_controller_resumes_without_loss_duplicates_or_orphans(
    docker_client: docker.DockerClient,
    trainer_image: str,
    tiny_data: Path,
    tmp_path: Path,
    owners: set[int],
    trial_starts: int,
) -> None:
    run = Run(tmp_path, tiny_data)
    run.config.write_text(CONFIG.format(trial_starts=trial_starts), encoding="utf-8")
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    # ---- session 1: baseline, then the candidate; SIGKILL while its TRAIN container runs
    first = run.start(1)
    owners.add(first.pid)
    try:
        train = wait_for_candidate_train(docker_client, first, run)
        timings["until_candidate_train_s"] = time.monotonic() - t0
        killed_trial = train.labels[C.LABEL_TRIAL]
        os.kill(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=30)  # reaped: no zombie holds the pid, so the reaper can see it is dead
    assert first.returncode == -signal.SIGKILL, run.tail(1)

    # The orphans: the dead controller's TRAIN container, holder and prewarmed EVAL (it starts with
    # TRAIN and waits for the controller's go), and both tmpfs volumes.
    roles = sorted(c.labels.get(C.LABEL_ROLE, "?") for c in containers_of(docker_client, {first.pid}))
    assert roles == ["eval", "holder", "train"], describe(docker_client, {first.pid})
    assert len(volumes_of(docker_client, {first.pid})) == 2, describe(docker_client, {first.pid})

    ledger = Ledger(run.run_dir / "ledger.jsonl")
    before = ledger.records()
    assert [r.kind for r in before] == ["baseline"], (
        "the kill came after the baseline's row, before the candidate's"
    )
    assert killed_trial not in {r.trial_id for r in before}
    lineage = Lineage(run.run_dir / "lineage", RUN_TAG)
    pending = lineage.refs(PENDING)
    killed_plan = TrialPlan.model_validate_json(
        (run.run_dir / "trials" / killed_trial / "trial.json").read_text(encoding="utf-8")
    )
    assert pending == {killed_trial: killed_plan.candidate_commit}, (
        "the killed candidate is committed, pending"
    )

    # ---- session 2: the same command again, to the end
    t1 = time.monotonic()
    second = run.start(2)
    owners.add(second.pid)
    try:
        rc = second.wait(timeout=FINISH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        pytest.fail(f"the resumed session did not finish within {FINISH_TIMEOUT_S:.0f} s:\n{run.tail(2)}")
    timings["resumed_session_s"] = time.monotonic() - t1
    assert rc == 0, run.tail(2)

    # Nothing of either controller is left on the engine.
    assert containers_of(docker_client, owners) == [], describe(docker_client, owners)
    assert volumes_of(docker_client, owners) == [], describe(docker_client, owners)

    # The ledger verifies, through the CLI a user would run.
    check = subprocess.run(
        [sys.executable, "-m", "harness", "verify-ledger", str(run.run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # Exactly the planned trials, each once: the baseline row untouched, one candidate row.
    records = ledger.records()
    ids = [r.trial_id for r in records]
    assert len(ids) == len(set(ids)), f"duplicated trial ids: {ids}"
    assert records[0] == before[0], "the row written before the kill is unchanged"
    assert [r.kind for r in records] == ["baseline", "candidate"], ids
    candidate = records[1]
    assert candidate.runs, "the candidate really ran (it was not recorded as invalid)"
    tsv = ResultsFile(run.run_dir / "results.tsv").read()
    assert [format_row(row) for row in tsv] == [format_row(r.result_row()) for r in records]

    # The lineage: every row's commit is reachable from the branch or a discarded ref; nothing pending.
    keeps = [r for r in records if r.decision is Decision.KEEP]
    assert lineage.head() == (keeps[-1].candidate_commit if keeps else lineage.root())
    assert lineage.refs(PENDING) == {}
    discarded = lineage.refs(DISCARDED)
    assert discarded == {
        r.trial_id: r.candidate_commit
        for r in records
        if r.kind == "candidate" and r.decision is not Decision.KEEP
    }
    commits = [r.candidate_commit for r in records]
    assert len(set(commits)) == len(records), f"one commit per row: {commits}"
    visible = reachable(lineage.path, [lineage.branch_ref, *(DISCARDED + t for t in discarded)])
    assert set(commits) <= visible, f"unreachable: {set(commits) - visible}"

    trial_dirs = sorted(p.name for p in (run.run_dir / "trials").iterdir())
    orphaned = lineage.refs(ORPHANED)
    if trial_starts > 1:
        # Re-run under the same id, re-using the killed attempt's commit; its output set aside.
        assert candidate.trial_id == killed_trial
        assert candidate.candidate_commit == killed_plan.candidate_commit
        assert orphaned == {}
        assert trial_dirs == [r.trial_id for r in records]
        trial = run.run_dir / "trials" / killed_trial
        starts = (trial / "starts.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(starts) == 2, starts
        aside = trial / "interrupted" / "1"
        assert (aside / C.SANDBOX_LOG_FILE).is_file(), sorted(p.name for p in trial.rglob("*"))
        assert not (aside / C.VERDICT_FILE).exists(), "the killed attempt never reached a verdict"
        assert (trial / C.VERDICT_FILE).is_file()
    else:
        # Abandoned: its commit orphaned, its folder renamed, a new id in its place.
        assert candidate.trial_id != killed_trial and candidate.trial_id > killed_trial
        assert orphaned == {killed_trial: killed_plan.candidate_commit}
        assert killed_plan.candidate_commit not in commits
        assert trial_dirs == sorted([*(r.trial_id for r in records), f"{killed_trial}.abandoned"])

    summary = {"trial_starts": trial_starts, **{k: round(v, 1) for k, v in timings.items()}}
    print(json.dumps(summary))
