"""Preflight passes a property only on concrete facts, and fails it when any fact says otherwise.

The probe inside the container reports observations (errno names, capability masks, byte counts, what a
host listener received); the controller decides. These tests feed the judges a realistic report of a
locked-down container, then break one fact at a time the way a real hole would show up (a connect that
succeeds, a writable root, a leaked key, a fork bomb stopped by the clock instead of the pids limit) and
check that exactly the matching property fails. A report that merely claims success, or is missing,
proves nothing and fails every property.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.constants import ExitCode
from sandbox.engine import docker_config
from sandbox.engine.limits import Limits, MiB
from sandbox.preflight import cli, facts, host, runner
from sandbox.preflight.checks import judge_all
from sandbox.verdict import EngineUnavailable

LIMITS = Limits(time_budget_s=30, kill_grace_s=5, mem_limit_mb=3072, output_limit_mb=128, pids_limit=512)
CANARY = "sk-ant-preflight-canary-0123456789abcdef"
VAL_FP = (4096, "a" * 64)
TRAIN_FP = (8192, "b" * 64)
ENV = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/opt/venv/bin:/usr/bin", C.ENV_OUT: C.CONTAINER_OUT}


def _good_probe() -> dict[str, Any]:
    writes = {d: "EROFS" for d in facts.READ_ONLY_DIRS} | {d: "ok" for d in facts.WRITABLE_DIRS}
    ro_mounts = [
        {"mountpoint": m, "options": ["ro", "nosuid"], "fstype": "ext4", "super_options": ["rw"]}
        for m in facts.READ_ONLY_MOUNTS
    ]
    return {
        "identity": {"uid": 65532, "euid": 65532, "gid": 65532, "egid": 65532, "groups": []},
        "status": {
            "CapInh": "0000000000000000",
            "CapPrm": "0000000000000000",
            "CapEff": "0000000000000000",
            "CapBnd": "0000000000000000",
            "CapAmb": "0000000000000000",
            "NoNewPrivs": "1",
            "Seccomp": "2",
            "prctl_no_new_privs": 1,
        },
        "privilege": {"chown_to_root": "EPERM", "raw_socket": "EPERM", "setuid_0": "EPERM"},
        "network": {
            "interfaces": ["lo"],
            "connect": [["172.17.0.1", 40000, "ENETUNREACH"], ["1.1.1.1", 443, "ENETUNREACH"]],
            "udp": [["1.1.1.1", 53, "ENETUNREACH"]],
            "dns": {"example.com": "error:gaierror"},
        },
        "writes": {"create": writes, "open": {f: "EACCES" for f in facts.READ_ONLY_FILES}},
        "mounts": [
            {"mountpoint": "/", "options": ["ro", "relatime"], "fstype": "overlay", "super_options": ["rw"]},
            {"mountpoint": "/tmp", "options": ["rw"], "fstype": "tmpfs", "super_options": ["rw"]},
            *ro_mounts,
        ],
        "scan": {
            "hits": {"val": [], "train": ["/data/train/shard_00000.npy"]},
            "sockets": [],
            "setuid": ["/usr/bin/passwd"],
            "files": 20000,
            "unreadable": 3,
            "scan_s": 0.9,
            "data_listing": ["tokenizer", "train"],
            "val_dir_exists": False,
            "engine_sockets": {p: False for p in facts.ENGINE_SOCKETS},
        },
        "env": {"self": dict(ENV), "procs": {"1": dict(ENV), "7": dict(ENV)}},
        "output": {"fs_bytes": 128 * MiB, "written": 128 * MiB, "stopped_by": "ENOSPC"},
        "pids": {
            "forked": 509,
            "stopped_by": "EAGAIN",
            "elapsed_s": 0.8,
            "fork_after": True,
            "pids_max": "512",
        },
        "elapsed_s": 3.0,
    }


def _good_attrs() -> dict[str, Any]:
    return {
        "State": {"ExitCode": 0, "OOMKilled": False},
        "Config": {"User": "65532:65532", "Env": [f"{k}={v}" for k, v in ENV.items()]},
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "CapAdd": None,
            "Privileged": False,
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": 512,
            "Memory": 3072 * MiB,
            "MemorySwap": 3072 * MiB,
            "Devices": [],
            "Runtime": "runc",
        },
        "Mounts": [
            {"Destination": C.CONTAINER_CANDIDATE, "RW": False, "Source": "/runs/x/train.py"},
            {"Destination": "/data/train", "RW": False, "Source": "/data/tiny/train"},
            {"Destination": "/data/tokenizer", "RW": False, "Source": "/data/tiny/tokenizer"},
            {"Destination": C.CONTAINER_OUT, "RW": True, "Source": "/var/lib/docker/volumes/out/_data"},
        ],
    }


PIDS_REPORT = {"forked": 509, "stopped_by": "EAGAIN", "elapsed_s": 0.8, "fork_after": True, "pids_max": "512"}
PIDS_LOG = "".join(f"forked {n}\n" for n in range(16, 509, 16)) + json.dumps(PIDS_REPORT) + "\n"


def _pids_attrs(exit_code: int, runtime: str = "runc", oom: bool = False) -> dict[str, Any]:
    return {
        "Name": "/ar-preflight-x-probe-pids",
        "State": {"ExitCode": exit_code, "OOMKilled": oom},
        "HostConfig": {"Runtime": runtime},
    }


def _mem_attrs(exit_code: int, *, oom: bool, runtime: str = "runc") -> dict[str, Any]:
    return {
        "Name": "/ar-preflight-x-probe-mem",
        "State": {"ExitCode": exit_code, "OOMKilled": oom},
        "HostConfig": {"Runtime": runtime},
    }


def _observed(**changes: Any) -> facts.Observed:
    base: dict[str, Any] = {
        "probe": _good_probe(),
        "probe_attrs": _good_attrs(),
        "probe_log_tail": "",
        "pids_attrs": _pids_attrs(0),
        "pids_log": PIDS_LOG,
        "mem_attrs": _mem_attrs(137, oom=True),
        "mem_log": "16\n32\n48\n64\n80\n96\n112\n128\n144\n160\n176\n192\n208\n224\n",
        "timed_out": (),
        "armed": ("172.17.0.1",),
        "listener_port": 40000,
        "accepted": (),
        "controller_secrets": {facts.CANARY_NAME: CANARY, "GITHUB_TOKEN": "ghp_not_a_real_token"},
        "val_fingerprints": (VAL_FP,),
        "train_fingerprints": (TRAIN_FP,),
        "data_dir": "/data/tiny",
        "host_spawn_ok": True,
    }
    return facts.Observed(**(base | changes))


def _without_no_new_privs(status: dict[str, Any]) -> dict[str, Any]:
    """A runtime that neither reports the /proc line nor answers prctl."""
    return {k: v for k, v in status.items() if k != "NoNewPrivs"} | {"prctl_no_new_privs": "error:OSError"}


def _pids(report: dict[str, Any]) -> facts.Observed:
    return _observed(pids_log=json.dumps(PIDS_REPORT | report) + "\n")


def _judge(obs: facts.Observed) -> dict[str, facts.Check]:
    return {check.name: check for check in judge_all(obs, LIMITS)}


def _with_probe(edit: Callable[[dict[str, Any]], None]) -> facts.Observed:
    probe = _good_probe()
    edit(probe)
    return _observed(probe=probe)


def _with_attrs(edit: Callable[[dict[str, Any]], None]) -> facts.Observed:
    attrs = _good_attrs()
    edit(attrs)
    return _observed(probe_attrs=attrs)


def test_a_locked_down_report_passes_every_property() -> None:
    checks = _judge(_observed())
    failed = {name: c.detail for name, c in checks.items() if not c.passed}
    assert failed == {}
    assert set(checks) == {
        "no_network_egress",
        "no_dns",
        "root_fs_read_only",
        "non_root_user",
        "no_capabilities",
        "no_new_privileges",
        "pids_limit",
        "memory_limit",
        "no_val_data",
        "output_cap",
        "no_secrets_in_env",
        "no_engine_socket",
        "hardening_flags",
    }


HOLES: list[tuple[str, str, Callable[[], facts.Observed]]] = [
    (
        "tcp connect to the internet succeeds",
        "no_network_egress",
        lambda: _with_probe(lambda p: p["network"]["connect"].append(["1.1.1.1", 443, "connected"])),
    ),
    (
        "the host listener received a connection",
        "no_network_egress",
        lambda: _observed(accepted=("172.17.0.2",)),
    ),
    ("the host path could not be armed", "no_network_egress", lambda: _observed(armed=())),
    (
        "a network interface besides lo",
        "no_network_egress",
        lambda: _with_probe(lambda p: p["network"]["interfaces"].append("eth0")),
    ),
    (
        "udp datagram sent",
        "no_network_egress",
        lambda: _with_probe(lambda p: p["network"]["udp"].append(["8.8.8.8", 53, "sent"])),
    ),
    (
        "dns resolves",
        "no_dns",
        lambda: _with_probe(lambda p: p["network"]["dns"].update({"example.com": ["93.184.216.34"]})),
    ),
    (
        "a file can be created in /usr",
        "root_fs_read_only",
        lambda: _with_probe(lambda p: p["writes"]["create"].update({"/usr": "ok"})),
    ),
    (
        "prepare.py opens for writing",
        "root_fs_read_only",
        lambda: _with_probe(lambda p: p["writes"]["open"].update({f"{C.CONTAINER_APP}/prepare.py": "ok"})),
    ),
    (
        "the root filesystem refuses only by permission, never EROFS",
        "root_fs_read_only",
        lambda: _with_probe(
            lambda p: p["writes"]["create"].update(dict.fromkeys(facts.ROOTFS_DIRS, "EACCES"))
        ),
    ),
    (
        "the data mount is not mounted ro",
        "root_fs_read_only",
        lambda: _with_probe(lambda p: p["mounts"][2].update({"options": ["rw"]})),
    ),
    (
        "the root mount is rw",
        "root_fs_read_only",
        lambda: _with_probe(lambda p: p["mounts"][0].update({"options": ["rw"]})),
    ),
    (
        "the writable control dir refuses too (the attempt itself is broken)",
        "root_fs_read_only",
        lambda: _with_probe(lambda p: p["writes"]["create"].update({C.CONTAINER_OUT: "EACCES"})),
    ),
    ("uid 0", "non_root_user", lambda: _with_probe(lambda p: p["identity"].update({"uid": 0, "euid": 0}))),
    ("group 0", "non_root_user", lambda: _with_probe(lambda p: p["identity"].update({"groups": [0]}))),
    (
        "setuid(0) works",
        "non_root_user",
        lambda: _with_probe(lambda p: p["privilege"].update({"setuid_0": "ok"})),
    ),
    (
        "an effective capability",
        "no_capabilities",
        lambda: _with_probe(lambda p: p["status"].update({"CapEff": "00000000a80425fb"})),
    ),
    (
        "a bounding capability",
        "no_capabilities",
        lambda: _with_probe(lambda p: p["status"].update({"CapBnd": "0000000000000001"})),
    ),
    (
        "chown to root works",
        "no_capabilities",
        lambda: _with_probe(lambda p: p["privilege"].update({"chown_to_root": "ok"})),
    ),
    (
        "an ambient capability",
        "no_capabilities",
        lambda: _with_probe(lambda p: p["status"].update({"CapAmb": "0000000000000400"})),
    ),
    (
        "new privileges allowed",
        "no_new_privileges",
        lambda: _with_probe(lambda p: p["status"].update({"NoNewPrivs": "0", "prctl_no_new_privs": 0})),
    ),
    (
        "the kernel says new privileges are allowed though /proc says otherwise",
        "no_new_privileges",
        lambda: _with_probe(lambda p: p["status"].update({"prctl_no_new_privs": 0})),
    ),
    (
        "no_new_privs could not be read at all",
        "no_new_privileges",
        lambda: _with_probe(lambda p: p.update({"status": _without_no_new_privs(p["status"])})),
    ),
    (
        "the fork bomb ran out of time, not pids",
        "pids_limit",
        lambda: _pids(report={"stopped_by": "time", "forked": 3000}),
    ),
    (
        "the fork bomb reached its own cap",
        "pids_limit",
        lambda: _pids(report={"stopped_by": "cap", "forked": 576}),
    ),
    (
        "EAGAIN far below pids_limit (another limit bit)",
        "pids_limit",
        lambda: _pids(report={"forked": 40}),
    ),
    (
        "the container cannot fork after the bomb",
        "pids_limit",
        lambda: _pids(report={"fork_after": False}),
    ),
    (
        "the runc container died in the bomb",
        "pids_limit",
        lambda: _observed(pids_attrs=_pids_attrs(137), pids_log="forked 16\nforked 32\n"),
    ),
    (
        "a gVisor sandbox that died only after forking past the limit",
        "pids_limit",
        lambda: _observed(pids_attrs=_pids_attrs(2, "runsc"), pids_log="forked 512\n"),
    ),
    (
        "the fork bomb never finished",
        "pids_limit",
        lambda: _observed(
            pids_attrs=_pids_attrs(137), pids_log="forked 16\n", timed_out=("ar-preflight-x-probe-pids",)
        ),
    ),
    ("the host cannot spawn afterwards", "pids_limit", lambda: _observed(host_spawn_ok=False)),
    (
        "memory probe not OOM-killed",
        "memory_limit",
        lambda: _observed(
            mem_attrs={"State": {"ExitCode": 0, "OOMKilled": False}}, mem_log="16\n1024\nsurvived\n"
        ),
    ),
    (
        "memory probe allocated past the limit before dying",
        "memory_limit",
        lambda: _observed(mem_log="16\n512\n"),
    ),
    (
        "a val shard is visible",
        "no_val_data",
        lambda: _with_probe(lambda p: p["scan"]["hits"]["val"].append("/opt/autoresearch/val.npy")),
    ),
    (
        "/data/val exists",
        "no_val_data",
        lambda: _with_probe(lambda p: p["scan"].update({"val_dir_exists": True})),
    ),
    (
        "the search did not even find the train shard",
        "no_val_data",
        lambda: _with_probe(lambda p: p["scan"]["hits"].update({"train": []})),
    ),
    ("no val shard on the host to look for", "no_val_data", lambda: _observed(val_fingerprints=())),
    (
        "the output write never failed",
        "output_cap",
        lambda: _with_probe(lambda p: p["output"].update({"written": 192 * MiB, "stopped_by": None})),
    ),
    (
        "the output stopped far below the configured cap",
        "output_cap",
        lambda: _with_probe(lambda p: p["output"].update({"written": 8 * MiB})),
    ),
    (
        "the canary value is in pid 1's environ",
        "no_secrets_in_env",
        lambda: _with_probe(lambda p: p["env"]["procs"]["1"].update({"SOME_VAR": CANARY})),
    ),
    (
        "a controller token is in the container env under its own name",
        "no_secrets_in_env",
        lambda: _with_probe(lambda p: p["env"]["self"].update({"GITHUB_TOKEN": "ghp_not_a_real_token"})),
    ),
    (
        "the engine recorded the key in Config.Env",
        "no_secrets_in_env",
        lambda: _with_attrs(lambda a: a["Config"]["Env"].append(f"{facts.CANARY_NAME}={CANARY}")),
    ),
    (
        "the canary was never planted",
        "no_secrets_in_env",
        lambda: _observed(controller_secrets={"GITHUB_TOKEN": "ghp_not_a_real_token"}),
    ),
    (
        "docker.sock present",
        "no_engine_socket",
        lambda: _with_probe(lambda p: p["scan"]["engine_sockets"].update({"/var/run/docker.sock": True})),
    ),
    (
        "a socket file somewhere",
        "no_engine_socket",
        lambda: _with_probe(lambda p: p["scan"]["sockets"].append("/srv/engine.sock")),
    ),
    (
        "the host network",
        "hardening_flags",
        lambda: _with_attrs(lambda a: a["HostConfig"].update({"NetworkMode": "host"})),
    ),
    (
        "a capability added back",
        "hardening_flags",
        lambda: _with_attrs(lambda a: a["HostConfig"].update({"CapAdd": ["SYS_ADMIN"]})),
    ),
    (
        "swap allowed",
        "hardening_flags",
        lambda: _with_attrs(lambda a: a["HostConfig"].update({"MemorySwap": -1})),
    ),
    (
        "a second writable mount",
        "hardening_flags",
        lambda: _with_attrs(lambda a: a["Mounts"].append({"Destination": "/data/val", "RW": True})),
    ),
]


@pytest.mark.parametrize(("hole", "prop", "make"), HOLES, ids=[h[0] for h in HOLES])
def test_each_hole_fails_exactly_its_property(
    hole: str, prop: str, make: Callable[[], facts.Observed]
) -> None:
    checks = _judge(make())
    failed = sorted(name for name, c in checks.items() if not c.passed)
    assert failed == [prop], f"{hole}: {[(n, checks[n].detail) for n in failed]}"


def test_gvisor_containing_the_bomb_by_dying_as_a_whole_passes_and_says_so() -> None:
    check = _judge(
        _observed(pids_attrs=_pids_attrs(2, "runsc"), pids_log="forked 16\nforked 32\nforked 48\n")
    )["pids_limit"]
    assert check.passed, check.detail
    assert "gVisor sandbox died as a whole" in check.detail
    assert check.evidence["container_survived"] is False and check.evidence["forked"] == 48


def test_gvisor_missing_the_oom_event_passes_on_the_sigkill_below_the_limit() -> None:
    check = _judge(_observed(mem_attrs=_mem_attrs(137, oom=False, runtime="runsc")))["memory_limit"]
    assert check.passed, check.detail
    assert "missed the OOM event" in check.detail
    assert check.evidence["oom_killed"] is False and check.evidence["allocated_mib"] == 224


def test_capamb_may_be_missing_when_permitted_and_inheritable_are_empty() -> None:
    probe = _good_probe()
    del probe["status"]["CapAmb"], probe["status"]["NoNewPrivs"]  # gVisor reports neither line
    checks = _judge(_observed(probe=probe))
    assert checks["no_capabilities"].passed, checks["no_capabilities"].detail
    assert checks["no_new_privileges"].passed, checks["no_new_privileges"].detail
    probe["status"]["CapPrm"] = "0000000000000001"
    assert not _judge(_observed(probe=probe))["no_capabilities"].passed


def test_a_report_that_only_claims_success_proves_nothing() -> None:
    checks = _judge(
        _observed(
            probe={"passed": True, "result": "PASS", "elapsed_s": 0.1},
            pids_log='{"passed": true}\n',
        )
    )
    probe_based = set(checks) - {"memory_limit", "hardening_flags"}
    assert all(not checks[name].passed for name in probe_based)
    assert all("not proven" in checks[name].detail for name in probe_based - {"no_new_privileges"})


def test_a_missing_report_fails_and_says_why() -> None:
    checks = _judge(_observed(probe={}, probe_log_tail="Traceback: ImportError", timed_out=("ar-probe",)))
    assert not checks["no_capabilities"].passed
    assert "printed no report" in checks["no_capabilities"].detail
    assert "ImportError" in checks["no_val_data"].detail


def test_a_section_the_probe_could_not_observe_fails() -> None:
    obs = _with_probe(lambda p: p.update({"scan": {"probe_error": "PermissionError: /"}}))
    checks = _judge(obs)
    assert not checks["no_val_data"].passed and not checks["no_engine_socket"].passed
    assert "PermissionError" in checks["no_val_data"].detail


def test_a_malformed_section_fails_its_property_instead_of_crashing() -> None:
    checks = _judge(_with_probe(lambda p: p["network"].pop("connect")))
    assert not checks["no_network_egress"].passed
    assert "malformed observations (KeyError" in checks["no_network_egress"].detail
    assert checks["no_capabilities"].passed


def test_evidence_carries_the_concrete_observations() -> None:
    checks = _judge(_observed())
    assert checks["no_capabilities"].evidence["CapEff"] == "0000000000000000"
    assert checks["pids_limit"].evidence["forked"] == 509
    assert checks["no_network_egress"].evidence["listener_accepted"] == []
    assert checks["output_cap"].evidence["written"] == 128 * MiB
    # Names only: the values of the container's variables are never put into the result.
    assert checks["no_secrets_in_env"].evidence["container_env_names"] == sorted(ENV)
    assert (
        CANARY
        not in facts.PreflightResult(
            checks=tuple(checks.values()),
            tier=facts.HardeningTier.RUNC,
            runtime="runc",
            default_runtime="runc",
            runtimes=("runc",),
            userns_remap=False,
            engine_version="x",
            cgroup_version="1",
            image="i",
            image_id="sha256:0",
            profile="tiny",
            wall_s=1.0,
        ).model_dump_json()
    )


def _result(passed: bool) -> facts.PreflightResult:
    broken = _with_probe(lambda p: p["status"].update({"NoNewPrivs": "0", "prctl_no_new_privs": 0}))
    checks = _judge(_observed() if passed else broken)
    return facts.PreflightResult(
        checks=tuple(checks.values()),
        tier=facts.HardeningTier.RUNC,
        runtime="runc",
        default_runtime="runc",
        runtimes=("runc", "runsc"),
        userns_remap=False,
        engine_version="20.10",
        cgroup_version="1",
        image=C.TRAINER_IMAGE,
        image_id="sha256:" + "0" * 64,
        profile="tiny",
        wall_s=4.2,
    )


@pytest.mark.parametrize(("passed", "code"), [(True, ExitCode.OK), (False, ExitCode.ISOLATION_BROKEN)])
def test_main_exit_code_and_json_line(
    passed: bool, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    result = _result(passed)
    seen: dict[str, Any] = {}

    def fake_run(client: object, limits: Limits, data_dir: object, **kw: Any) -> facts.PreflightResult:
        seen.update(limits=limits, data_dir=data_dir, **kw)
        return result

    monkeypatch.setattr(docker_config, "connect", lambda: object())
    monkeypatch.setattr(runner, "run_preflight", fake_run)
    args = argparse.Namespace(profile="tiny", runtime="runsc", data_dir=None, json=True)
    assert cli.main(args) == code
    out, err = capsys.readouterr()
    line = json.loads(out.strip().splitlines()[-1])
    assert line["passed"] is passed
    assert [c["name"] for c in line["checks"]] == [c.name for c in result.checks]
    assert seen["limits"].runtime == "runsc"
    assert ("FAIL" in err) is not passed and "PROPERTY" in err


def test_main_reports_an_unreachable_engine_as_infrastructure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down() -> object:
        raise EngineUnavailable("cannot reach the Docker engine")

    monkeypatch.setattr(docker_config, "connect", down)
    assert cli.main(argparse.Namespace(json=False)) == ExitCode.ENGINE
    assert "EngineUnavailable" in capsys.readouterr().err


def test_the_table_names_every_property_and_the_tier() -> None:
    table = cli.format_table(_result(False))
    for check in _result(False).checks:
        assert check.name in table
    assert "tier: runc" in table
    assert "1 of 13 properties FAILED: no_new_privileges" in table


def test_add_arguments_defaults() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.profile, args.runtime, args.data_dir, args.json) == ("tiny", None, None, False)
    assert parser.parse_args(["--runtime", "runsc", "--json"]).runtime == "runsc"


def test_the_canary_is_planted_then_the_previous_value_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv(facts.CANARY_NAME, "the-users-real-key")
    with host.canary_in_environment() as canary:
        assert os.environ[facts.CANARY_NAME] == canary != "the-users-real-key"
        assert host.controller_secrets()[facts.CANARY_NAME] == canary
    assert os.environ[facts.CANARY_NAME] == "the-users-real-key"


def test_the_host_listener_counts_only_what_arrives_after_arming() -> None:
    import socket

    listener = host.HostListener()
    try:
        assert listener.arm(["127.0.0.1", "192.0.2.1"]) == ["127.0.0.1"]  # TEST-NET-1 is unreachable
        assert listener.accepted() == []
        with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
            pass
        for _ in range(200):
            if listener.accepted():
                break
            import time

            time.sleep(0.01)
        assert listener.accepted() == ["127.0.0.1"]
    finally:
        listener.close()
