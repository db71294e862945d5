"""The container configurations DockerSandbox builds are locked down, checked without an engine.

Property: TRAIN's config has no network, a read-only root, no capabilities, a non-root user, memory
equal to memory+swap, an engine-side log cap, an environment built from scratch, GPUs only as the
explicit device ids of the spec's lease (never "all", none without a lease), and mounts that never
include val/; EVAL's config is the same hardening with val/ and the artifact read-only.
Attacks defeated: a GPU request that silently grants every device on the host (`count=-1`), an API
key leaking from the controller's environment, the validation split mounted into TRAIN, a log flood
filling the engine's disk. This suite runs in every CI job, engine or not; the docker-marked tests
show the engine honours the same settings.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from sandbox import constants as C
from sandbox.engine.docker import DockerTrial
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialSpec

# Stand-ins for docker Volume objects: building a config only reads their name.
OUT: Any = SimpleNamespace(name="ar-test-out")
REPORT: Any = SimpleNamespace(name="ar-test-report")
ENGINE_UNUSED: Any = None  # building configs never calls the engine


def _trial(
    tmp_path: Path, *, gpu_ids: tuple[str, ...] = (), runtime: Literal["runc", "runsc"] | None = None
) -> DockerTrial:
    data = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (data / name).mkdir(parents=True)
    spec = TrialSpec(
        trial_id="cfg",
        candidate=tmp_path / "train.py",
        trial_dir=tmp_path / "trial",
        profile="tiny",
        limits=Limits(time_budget_s=5, kill_grace_s=1, runtime=runtime),
        gpu_ids=gpu_ids,
    )
    return DockerTrial(
        client=ENGINE_UNUSED,
        image_id="sha256:test",
        spec=spec,
        trial_dir=tmp_path / "trial",
        data_dir=data,
        candidate=tmp_path / "trial" / "train.py",
    )


def _targets(config: dict[str, Any]) -> dict[str, Any]:
    return {m["Target"]: m for m in config["mounts"]}


def test_train_is_hardened_and_never_sees_val(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    config = _trial(tmp_path).train_config(OUT)
    assert config["network_mode"] == "none" and config["read_only"] is True
    assert config["cap_drop"] == ["ALL"] and "no-new-privileges:true" in config["security_opt"]
    assert not config["user"].startswith("0") and config["privileged"] is False
    assert config["mem_limit"] == config["memswap_limit"]
    assert config["log_config"]["Type"] == "json-file" and config["log_config"]["Config"]["max-size"]
    assert config["device_requests"] == []
    assert "runtime" not in config
    # The candidate starts only behind the sandbox's own seccomp filter (tests/test_sandbox_jail_*.py).
    assert config["command"] == [*C.JAIL, "python", C.CONTAINER_CANDIDATE]

    mounts = _targets(config)
    assert set(mounts) == {C.CONTAINER_CANDIDATE, "/data/train", "/data/tokenizer", C.CONTAINER_OUT}
    assert all(m["ReadOnly"] for target, m in mounts.items() if target != C.CONTAINER_OUT)
    assert not any(C.VAL_DIRNAME in str(m["Source"]).split("/") for m in mounts.values())

    env = config["environment"]
    assert "ANTHROPIC_API_KEY" not in env
    assert set(env) == {
        "HOME",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        C.ENV_PROFILE,
        C.ENV_DATA,
        C.ENV_SEED,
        C.ENV_OUT,
    }


def test_gpus_are_the_leased_ids_only(tmp_path: Path) -> None:
    trial = _trial(tmp_path, gpu_ids=("1", "3"), runtime="runsc")
    for config in (trial.train_config(OUT), trial._eval_config(OUT, REPORT)):
        (request,) = config["device_requests"]
        assert request["DeviceIDs"] == ["1", "3"]
        assert request["Count"] in (0, None)  # -1 would mean every GPU on the host
        assert config["runtime"] == "runsc"
    command = trial._eval_config(OUT, REPORT)["command"]
    assert command[command.index("--device") + 1] == "cuda"


def test_eval_reads_the_artifact_and_val_read_only(tmp_path: Path) -> None:
    config = _trial(tmp_path)._eval_config(OUT, REPORT)
    mounts = _targets(config)
    assert mounts[C.CONTAINER_ARTIFACT]["Source"] == OUT.name and mounts[C.CONTAINER_ARTIFACT]["ReadOnly"]
    assert mounts["/data/val"]["ReadOnly"] and mounts["/data/tokenizer"]["ReadOnly"]
    assert [t for t, m in mounts.items() if not m["ReadOnly"]] == [C.CONTAINER_REPORT_DIR]
    assert C.CONTAINER_CANDIDATE not in mounts and "/data/train" not in mounts
    assert config["network_mode"] == "none" and config["read_only"] is True
    assert config["command"][: len(C.JAIL) + 3] == [*C.JAIL, "python", "-m", "sandbox.incontainer.evaluate"]
