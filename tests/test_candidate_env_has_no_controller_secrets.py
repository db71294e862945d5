"""TRAIN's environment is built from scratch: nothing of the controller's environment gets in.

Property: the candidate sees exactly the variables the sandbox sets (profile, paths, seed, HOME,
TMPDIR, Python flags) plus the image's own, never the controller's: an API key exported in the
controller's shell is absent, as is every variable the image and the sandbox do not define.
Attack defeated: reading the agent's API key (or cloud credentials) from the environment to spend
money, call other models, or leak it through the log.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from sandbox import constants as C
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

SECRET = "sk-ant-api03-this-must-never-reach-a-candidate"


def test_controller_secrets_do_not_reach_train(
    docker_sandbox: DockerSandbox,
    docker_client: docker.DockerClient,
    trainer_image: str,
    make_spec: Callable[..., TrialSpec],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("AUTORESEARCH_EXTRA", "controller-only")
    candidate = tmp_path / "env_dump.py"
    candidate.write_text(textwrap.dedent('import json, os\nprint("ENV " + json.dumps(dict(os.environ)))\n'))
    verdict = docker_sandbox.run_trial(make_spec(candidate, seed=11))
    log = Path(verdict.logs["train"]).read_text()
    env = json.loads(log.split("ENV ", 1)[1].splitlines()[0])

    assert SECRET not in log
    assert "ANTHROPIC_API_KEY" not in env and "AUTORESEARCH_EXTRA" not in env
    image_env = {
        item.split("=", 1)[0] for item in docker_client.images.get(trainer_image).attrs["Config"]["Env"] or []
    }
    ours = {"HOME", "TMPDIR", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    ours |= {C.ENV_PROFILE, C.ENV_OUT, C.ENV_DATA, C.ENV_SEED}
    assert set(env) - image_env - ours <= {"HOSTNAME"}  # the engine sets HOSTNAME itself
    assert (
        env[C.ENV_SEED] == "11" and env[C.ENV_OUT] == C.CONTAINER_OUT and env[C.ENV_DATA] == C.CONTAINER_DATA
    )
