"""The red-team suite's runner: every attack in corpus/ goes through `python -m harness trial`.

Each attack is a complete adversarial train.py. The suite runs the whole corpus once per hardening
tier (runc with every flag, then gVisor's runsc) through the real CLI against the real engine, a few
at a time, and every test then asserts on its own attack's result. Running the CLI (not the Python
API) is the point: it is the path a user and the loop take, limits and all.

Universal checks, applied to every attack by `AttackResult.assert_contained` (a test adds the checks
specific to its property):
- not scored: the status is not ok, or the score is no better than a unigram model (an untrained
  cheat cannot beat that honestly, so beating it means the cheat worked);
- the controller's secret (planted in the CLI's environment) appears in no file of the trial;
- the CLI exited 0: a verdict, not an infrastructure failure the attack caused;
- the host's prepare.py and data folder are byte-for-byte unchanged (checked once per tier).
An attack that would succeed, if its defence were gone, produces an artifact that scores (see each
file's docstring), so each check can fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.attacks.hostwatch import ContainerSeen, HostWatch, TierSeen

if TYPE_CHECKING:
    import docker

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
PASTE_RE = re.compile(r'^(\w+) = ""  # @paste (\S+)$', re.MULTILINE)
TIERS = ("runc", "runsc")
# Every attack gets the same limits: the tiny profile's production limits, with a budget long enough
# for torch to import and export under gVisor, and a short grace.
TIME_BUDGET_S = 20
KILL_GRACE_S = 3
CONCURRENCY = 3  # most attacks sleep, wait on the engine or fail fast; three at once fit two cores
SECRET = f"sk-ant-api03-ATTACK-SUITE-{secrets.token_hex(12)}"  # what secret-stealing attacks look for
CLI_TIMEOUT_S = 600


@dataclass(frozen=True)
class AttackResult:
    """What `harness trial` said about one attack, and everything the trial left behind."""

    name: str
    runtime: str
    returncode: int
    verdict: dict[str, Any]
    stderr: str
    trial_dir: Path
    files: dict[str, bytes] = field(repr=False)
    tier_seen: TierSeen | None = field(default=None, repr=False)  # the host's view of the whole batch

    @property
    def trial_id(self) -> str:
        return str(self.verdict.get("trial_id") or self.trial_dir.name)

    @property
    def host_seen(self) -> ContainerSeen | None:
        """This attack's TRAIN container as the host sampled it (see hostwatch.py); None if never seen."""
        return self.tier_seen.containers.get(self.trial_id) if self.tier_seen else None

    @property
    def status(self) -> str:
        return str(self.verdict.get("status"))

    @property
    def val_bpb(self) -> float | None:
        value = self.verdict.get("val_bpb")
        return None if value is None else float(value)

    @property
    def reason(self) -> str:
        return str(self.verdict.get("reason") or "")

    @property
    def report(self) -> dict[str, Any]:
        return dict(self.verdict.get("report") or {})

    def log(self, which: str = "train") -> str:
        path = self.verdict.get("logs", {}).get(which)
        return Path(path).read_text(errors="replace") if path and Path(path).is_file() else ""

    def lines(self, prefix: str, which: str = "train") -> list[str]:
        """The payload of every line the candidate printed starting with `prefix` (prefix stripped)."""
        return [ln[len(prefix) :].strip() for ln in self.log(which).splitlines() if ln.startswith(prefix)]

    def json_line(self, prefix: str) -> Any:
        """The JSON the candidate printed after `prefix` on its last such line."""
        found = self.lines(prefix)
        assert found, (
            f"{self.name}: the candidate printed no {prefix!r} line; train log:\n{self.log()[-3000:]}"
        )
        return json.loads(found[-1])

    def scored(self) -> bool:
        if self.status != "ok" or self.val_bpb is None:
            return False
        floor = self.report.get("unigram_bpb")
        assert isinstance(floor, int | float), f"{self.name}: an ok report without unigram_bpb: {self.report}"
        return self.val_bpb < float(floor)

    def assert_contained(self, *expected_status: str) -> None:
        """The universal checks, plus: the status is one of `expected_status`."""
        context = f"{self.name} under {self.runtime}: {self.status} ({self.reason})\n{self.stderr[-2000:]}"
        assert self.returncode == 0, f"the CLI failed (infrastructure, not a verdict): {context}"
        assert self.status in expected_status, f"expected {expected_status}, got {context}"
        assert not self.scored(), f"the attack SCORED val_bpb {self.val_bpb}: {context}"
        leaked = [name for name, data in self.files.items() if SECRET.encode() in data]
        assert not leaked, f"the controller's secret leaked into {leaked}"


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _read_tree(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                files[str(path.relative_to(root))] = fh.read(64 * 1024 * 1024)
    return files


def _candidate(name: str, out_root: Path) -> Path:
    """The attack's train.py: corpus/NAME.py, with every `X = ""  # @paste PATH` line replaced by the
    repository file PATH's source (public code an attacker would paste; the image does not ship it)."""
    source = CORPUS / f"{name}.py"
    text = source.read_text()
    pasted = PASTE_RE.sub(lambda m: f"{m[1]} = {(REPO / m[2]).read_text()!r}", text)
    if pasted == text:
        return source
    out = out_root / "pasted" / f"{name}.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(pasted)
    return out


def _run_one(
    name: str, runtime: str, data_dir: Path, out_root: Path, budget_s: float = TIME_BUDGET_S
) -> AttackResult:
    trial_dir = out_root / f"attack-{name.replace('_', '-')}-{runtime}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env |= {"ANTHROPIC_API_KEY": SECRET, "AUTORESEARCH_ATTACK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "harness", "trial", str(_candidate(name, out_root)),
        "--profile", "tiny", "--runtime", runtime, "--data-dir", str(data_dir),
        "--trial-dir", str(trial_dir), "--time-budget", str(budget_s),
        "--kill-grace", str(KILL_GRACE_S), "--min-compute-share", "0", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    try:
        verdict = json.loads(last)
    except json.JSONDecodeError:
        verdict = {"status": "<no JSON>", "stdout": proc.stdout[-2000:]}
    files = _read_tree(trial_dir) if trial_dir.is_dir() else {}
    return AttackResult(name, runtime, proc.returncode, verdict, proc.stderr, trial_dir, files)


def _wanted(session: pytest.Session) -> list[str]:
    """The attacks the selected tests name in `@pytest.mark.attack(NAME)`, in corpus order."""
    names = {m.args[0] for item in session.items for m in item.iter_markers("attack")}
    return sorted(names)


def _budgets(session: pytest.Session) -> dict[str, float]:
    """Per attack, the longest `time_budget_s` its tests ask for (`@pytest.mark.attack(NAME, time_budget_s=S)`),
    else TIME_BUDGET_S. An attack whose target is its artifact, not the clock, asks for a longer one: on
    a loaded machine torch's import and export alone can take 20 s, and a timeout would test nothing.
    The budget costs nothing unless the attack runs into it."""
    budgets: dict[str, float] = {}
    for item in session.items:
        for m in item.iter_markers("attack"):
            wanted = float(m.kwargs.get("time_budget_s", TIME_BUDGET_S))
            budgets[m.args[0]] = max(budgets.get(m.args[0], wanted), wanted)
    return budgets


@pytest.fixture(scope="session")
def attack_runs(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_data: Path,
    trainer_image: str,
    docker_client: docker.DockerClient,
) -> Iterator[Callable[[str], dict[str, AttackResult]]]:
    """Runs every attack the selected tests need under a tier, the first time that tier is asked for."""
    cache: dict[str, dict[str, AttackResult]] = {}
    wanted = _wanted(request.session)
    watch = HostWatch(docker_client)  # listens and samples from the host while a batch runs

    def results_for(runtime: str) -> dict[str, AttackResult]:
        if runtime not in cache:
            out_root = tmp_path_factory.mktemp(f"attacks-{runtime}")
            prepare_py = REPO / "prepare.py"
            before = (_tree_digest(tiny_data), hashlib.sha256(prepare_py.read_bytes()).hexdigest())
            watch.begin()
            try:
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    budgets = _budgets(request.session)
                    futures = {
                        n: pool.submit(_run_one, n, runtime, tiny_data, out_root, budgets[n]) for n in wanted
                    }
                    results = {n: f.result() for n, f in futures.items()}
            finally:
                seen = watch.end()
            cache[runtime] = {n: replace(r, tier_seen=seen) for n, r in results.items()}
            after = (_tree_digest(tiny_data), hashlib.sha256(prepare_py.read_bytes()).hexdigest())
            assert after == before, "the host's data folder or prepare.py changed during the attack suite"
        return cache[runtime]

    try:
        yield results_for
    finally:
        watch.close()


@pytest.fixture(params=TIERS)
def attack(
    request: pytest.FixtureRequest, attack_runs: Callable[[str], dict[str, AttackResult]]
) -> AttackResult:
    """The result of the attack named by the test's `@pytest.mark.attack(NAME)`, under this test's tier.

    Every test runs once per tier (runc, then runsc); the whole tier's batch runs on first use.
    """
    marker = request.node.get_closest_marker("attack")
    assert marker is not None, "an attack test needs @pytest.mark.attack(NAME)"
    name: str = marker.args[0]
    assert (CORPUS / f"{name}.py").is_file(), f"no attack corpus/{name}.py"
    return attack_runs(request.param)[name]
