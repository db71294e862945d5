"""Attacks on the host and the isolation: a candidate never gets out, never starves the host, never leaks.

Each test runs its attack (tests/attacks/corpus/NAME.py, a complete hostile train.py) through
`python -m harness trial` on each tier and asserts three things: the universal checks
(`assert_contained`: a status, not an infrastructure error; no score; the controller's planted API
key nowhere in the trial), what the attack itself reported in its `ATTACK <json>` line, and, where the
host can see it, what the host saw from outside (tests/attacks/hostwatch.py: a TCP/UDP listener
reachable through the docker0 gateway, the container's pids count and OOM score sampled from its
cgroup, whether the host could still start processes; the engine's containers and volumes after).

Every attack tries for real and would use an open door (download weights, start a privileged
container through the engine, lift its own limits), so each check can fail. Where the two tiers
differ by design (gVisor implements some calls in its own kernel) the test says which tier and why.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from harness.agents import AgentContext, AgentSettings, LastTrial
from harness.agents.base import LOG_TAIL_LIMIT
from harness.agents.brief import brief
from harness.loop import read_tail
from sandbox import constants as C
from sandbox.engine.docker_config import OUTPUT_MAX_INODES
from tests.attacks.conftest import AttackResult

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
UID = C.CONTAINER_UID
# How the kernel (or gVisor's) says no to a call a candidate may not make.
DENIED = frozenset({"EPERM", "EACCES", "ENOSYS", "ENODEV", "ENOTSUP", "EOPNOTSUPP"})
REFUSED_WRITE = frozenset({"EROFS", "EACCES", "EPERM", "ENOENT"})
NO_SOCKET = frozenset({"EPERM", "EACCES", "EAFNOSUPPORT", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT"})
UNREACHABLE = frozenset({"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL"})  # no route: not even a refusal
TRAIN_PY = (Path(__file__).resolve().parents[2] / "train.py").read_text()
# The attacks that wait for the controller's clock (it must still win) need no more than this: each
# does its work in a second or two, even under gVisor on a loaded host.
CLOCK_BUDGET_S = 10


def limit(attack: AttackResult, name: str) -> int:
    """A limit the trial actually ran under, as the verdict records it."""
    return int(attack.verdict["limits"][name])


def left_behind(client: docker.DockerClient, attack: AttackResult) -> list[str]:
    """Containers, volumes and host processes of the trial that still exist."""
    label = f"{C.LABEL_TRIAL}={attack.trial_id}"
    left = [f"container {c.name}" for c in client.containers.list(all=True, filters={"label": label})]
    left += [f"volume {v.name}" for v in client.volumes.list(filters={"label": label})]
    state = json.loads(attack.files[C.TRAIN_STATE_FILE])
    left += [f"host process {pid}" for pid in _host_processes_in(state["Id"])]
    return left


def _host_processes_in(container_id: str) -> list[int]:
    """Host pids whose cgroup names the container (runc's processes and gVisor's sentry alike)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if container_id in (proc / "cgroup").read_text():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def refused(result: str, allowed: frozenset[str]) -> bool:
    """An errno from the allowed set, or an open that worked followed by a write that did not."""
    return result in allowed or (result.startswith("opened, write ") and result.split()[-1] in allowed)


# --------------------------------------------------------------------------- resources


@pytest.mark.attack("fork_bomb", time_budget_s=CLOCK_BUDGET_S)
def test_fork_bomb_is_held_at_the_pids_limit_and_leaves_nothing(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    # runc: the kernel refuses forks at pids_limit and the clock ends the trial. gVisor: the sentry's
    # own threads count against the same limit and the whole sandbox dies first (google/gvisor#2490).
    attack.assert_contained("timeout" if attack.runtime == "runc" else "crash", "timeout")
    pids_limit = limit(attack, "pids_limit")
    seen = attack.host_seen
    assert seen is not None and seen.samples, "the host never sampled the bomb's cgroup"
    assert seen.max_pids <= pids_limit, f"the host counted {seen.max_pids} tasks, above {pids_limit}"
    assert seen.pids_max == str(pids_limit)
    assert seen.host_spawn_failures == 0, "the host could not start a process while the bomb ran"
    if attack.runtime == "runc":  # (under gVisor the sandbox dies first, see above)
        assert seen.max_pids >= pids_limit // 2, (
            "the bomb never came near the limit: the check proves nothing"
        )
        inside = attack.json_line("ATTACK")  # the watcher's own view; on a loaded host it may lag
        assert inside["pids_max"] == str(pids_limit) and inside["max_pids_seen"] <= pids_limit, inside
    assert not left_behind(docker_client, attack)
    assert subprocess.run(["true"], check=False, timeout=30).returncode == 0


# Touching 3 GiB takes 4 s on a quiet 2-core host and over 20 s on a loaded one; the longer budget
# costs nothing when the kernel kills the bomb first, which is the point.
@pytest.mark.attack("memory_bomb", time_budget_s=60)
def test_memory_bomb_is_killed_at_the_memory_limit(attack: AttackResult) -> None:
    if attack.runtime == "runsc" and attack.status == "crash":
        # gVisor: the engine sometimes misses the OOM event and reports only the kernel's SIGKILL.
        assert "code 137" in attack.reason, attack.reason
        attack.assert_contained("crash")
    else:
        attack.assert_contained("oom")
    limit_mb = limit(attack, "mem_limit_mb")
    held = attack.json_line("ATTACK")
    assert held["shm_mb"] > 0 and held["tmp_mb"] > 0, "the tmpfs phase never ran"
    if attack.runtime == "runc":  # every MiB counted was charged to the container at one moment
        assert held["total_mb"] <= limit_mb, f"held {held['total_mb']} MiB under a {limit_mb} MiB limit"
        pressed = held["total_mb"]
    else:  # gVisor commits memfd space lazily: only tmpfs and heap count there
        pressed = held["shm_mb"] + held["tmp_mb"] + held["heap_mb"]
    assert pressed >= limit_mb // 2, f"the bomb stopped at {pressed} MiB: the check proves nothing"
    assert attack.verdict["peak_memory_gb"] <= limit_mb / 1024 + 0.01  # the controller's own measurement


@pytest.mark.attack("fill_tmp")
def test_scratch_space_is_capped_tmpfs_not_the_hosts_disk(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    assert "code 3" in attack.reason  # the candidate's own exit, after the writes stopped
    filled = attack.json_line("ATTACK")
    for where, cap_mb in (("tmp", limit(attack, "tmp_size_mb")), ("shm", limit(attack, "shm_size_mb"))):
        report = filled[where]
        assert report["stopped_by"] == "ENOSPC", f"/{where}: {report}"
        assert report["fs_mb"] == cap_mb, f"/{where} is {report['fs_mb']} MiB, not the {cap_mb} MiB tmpfs"
        assert 0.9 * cap_mb <= report["written_mb"] <= cap_mb, f"/{where}: {report}"
    assert filled["var_tmp"]["written_mb"] == 0 and filled["var_tmp"]["stopped_by"] in {"EROFS", "EACCES"}


@pytest.mark.attack("fill_output")
def test_output_flood_is_output_limit_even_when_the_errors_are_swallowed(attack: AttackResult) -> None:
    attack.assert_contained("output_limit")  # it exited 0 with a model.pt2: the full channel decides
    cap_mb = limit(attack, "output_limit_mb")
    flood = attack.json_line("ATTACK")
    assert flood["bytes"]["stopped_by"] == "ENOSPC"
    assert 0.9 * cap_mb <= flood["bytes"]["written_mb"] <= cap_mb, flood
    assert flood["files"]["stopped_by"] == "ENOSPC"
    assert flood["files"]["created"] < OUTPUT_MAX_INODES, flood
    on_disk = sum(len(data) for data in attack.files.values())
    assert on_disk < 4 * MiB, f"the trial folder holds {on_disk} bytes: the flood reached the host's disk"


# --------------------------------------------------------------------------- network


@pytest.mark.attack("network_egress")
def test_no_packet_leaves_train_not_even_to_the_host(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tier = attack.tier_seen
    assert tier is not None and tier.armed, "control failed: the host cannot reach its own listener"
    tried = attack.json_line("ATTACK")
    assert f"{tier.gateway}:{tier.port}" in tried["tcp"], "the attack never aimed at the host's listener"
    assert f"{tier.gateway}:2375" in tried["tcp"] and f"{tier.gateway}:2376" in tried["tcp"]
    opened = {target: result for target, result in tried["tcp"].items() if result not in UNREACHABLE}
    assert not opened, f"TCP from TRAIN got further than 'unreachable': {opened}"
    assert not tried["used"]
    sent = [target for target, result in tried["udp"].items() if result not in UNREACHABLE]
    assert not sent, f"UDP datagrams left TRAIN: {sent}"
    resolved = {name: addrs for name, addrs in tried["dns"].items() if isinstance(addrs, list)}
    assert not resolved, f"names resolved inside TRAIN: {resolved}"
    assert tried["interfaces"] == ["lo"] and tried["routes"] in (0, "ENOENT")
    assert tier.tcp_peers == [] and tier.udp_peers == [], (
        f"the host's listener heard from {tier.tcp_peers + tier.udp_peers}"
    )


@pytest.mark.attack("raw_socket")
def test_no_raw_or_packet_socket_and_no_network_configuration(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    opened = {kind: result for kind, result in tried["sockets"].items() if result not in NO_SOCKET}
    assert not opened, f"raw sockets opened: {opened}"
    assert tried["sent"] == {}
    assert tried["netlink"]["socket"] == "opened", "control failed: rtnetlink itself did not open"
    changes = {k: v for k, v in tried["netlink"].items() if k != "socket" and v not in {"EPERM", "EACCES"}}
    assert not changes, f"rtnetlink changes not refused: {changes}"
    assert tried["interfaces"] == ["lo"]


@pytest.mark.attack("engine_socket")
def test_no_engine_api_is_reachable_from_train(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    control = "/tmp/attack-control.sock"
    assert tried["unix"].get(control, "").startswith("HTTP/1.0 200"), "control failed: the search is blind"
    assert tried["sockets"] == [control], f"sockets in TRAIN besides the attack's own: {tried['sockets']}"
    assert not any(tried["well_known"].values()), tried["well_known"]
    assert tried["docker_host"] is None
    loopback = ("127.0.0.1:", "::1:")  # its own network namespace: nothing listens, the kernel refuses
    answered = {
        t: r
        for t, r in tried["tcp"].items()
        if r not in UNREACHABLE and not (t.startswith(loopback) and r == "ECONNREFUSED")
    }
    assert not answered, f"an engine port answered: {answered}"
    assert tried["escape"] is None
    escaped = docker_client.containers.list(all=True, filters={"name": "ar-attack-escape-engine-socket"})
    assert not escaped, f"the attack created {[c.name for c in escaped]} through the engine"


# --------------------------------------------------------------------------- privileges


@pytest.mark.attack("setuid_escalation")
def test_setuid_binaries_and_setid_calls_never_give_root(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    assert tried["control"]["euids"] == [UID], "control failed: the credential sampling sees nothing"
    elevated = {
        path: (r["euids"], r["egids"])
        for path, r in tried["binaries"].items()
        if set(r["euids"]) != {UID} or set(r["egids"]) != {C.CONTAINER_GID}
    }
    assert not elevated, f"a setuid/setgid binary changed the credentials: {elevated}"
    assert tried["no_new_privs"] == 1
    direct = {
        k: v for k, v in tried["direct"].items() if k not in ("uid_after", "euid_after") and v != "EPERM"
    }
    assert not direct, f"set*id/chown/capset not refused: {direct}"
    assert tried["direct"]["uid_after"] == tried["direct"]["euid_after"] == UID


@pytest.mark.attack("mount_syscalls")
def test_mount_umount_pivot_root_are_refused_and_the_mounts_stay_read_only(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    allowed = {name: result for name, result in tried["calls"].items() if result not in DENIED}
    assert not allowed, f"mount-family calls not refused: {allowed}"
    written = {path: result for path, result in tried["writes"].items() if result not in REFUSED_WRITE}
    assert not written, f"read-only paths written: {written}"
    assert tried["control_write_tmp"] == "ok", "control failed: the write itself does not work"
    assert tried["mounts_after"] == tried["mounts_before"]


@pytest.mark.attack("unshare_namespaces")
def test_no_new_namespaces_and_no_root_inside_one(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    # First what a user namespace would be for: whatever unshare gave, the mounts stay read-only.
    for name, attempt in tried["attempts"].items():
        for step, result in attempt.items():
            if step.startswith(("remount_rw_", "write_", "mount_", "bind_")):
                assert result in REFUSED_WRITE, f"{name}: {step} -> {result}"
    for line in attack.lines("CLONE_CHILD"):
        inner = json.loads(line)
        wrote = {
            k: v for k, v in inner.items() if k.startswith(("remount_rw_", "write_", "mount_")) and v == "ok"
        }
        assert not wrote, f"clone(CLONE_NEWUSER) child: {wrote}"
    assert tried["ns_after"] == tried["ns_before"]
    # Then the property itself: no namespace may be created at all. The sandbox's own filter
    # (sandbox/incontainer/jail.py) denies it on both tiers: runsc ignores the engine's seccomp profile unless
    # started with --oci-seccomp, and this suite found gVisor granting user namespaces without it.
    granted = {name: a["result"] for name, a in tried["attempts"].items() if a.get("result") == "ok"}
    assert not granted, (
        f"{attack.runtime} granted new namespaces {sorted(granted)} (in a user namespace the candidate is "
        f"uid {tried['attempts'].get('user', {}).get('uid_in_ns')} with CapEff "
        f"{tried['attempts'].get('user', {}).get('CapEff_in_ns')})"
    )


@pytest.mark.attack("ptrace_attach", time_budget_s=CLOCK_BUDGET_S)
def test_ptrace_reaches_nothing_outside_the_candidates_own_processes(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    # It keeps PID 1 stopped if it can, ignores SIGTERM and waits: only the clock's SIGKILL ends it.
    attack.assert_contained("timeout")
    tried = attack.json_line("ATTACK")
    for pid, status in tried["visible"].items():  # a PID namespace of its own: nothing else to trace
        assert status["Uid"] == str(UID) and int(status["CapEff"], 16) == 0, f"pid {pid}: {status}"
        assert status["cmdline"] in (
            "/sbin/docker-init -- python -I -S /opt/autoresearch/sandbox/incontainer/jail.py python /workspace/train.py",
            "python /workspace/train.py",
        )
    for name, target in tried["targets"].items():
        # Denied on both tiers by the sandbox's own filter (sandbox/incontainer/jail.py). Before it, Docker's default
        # profile let runc candidates attach to PID 1 (same uid, no Yama on the host).
        assert target["process_vm_readv"] in DENIED and target["process_vm_writev"] in DENIED, (name, target)
        assert target["attach"] in DENIED and target["seize"] in DENIED, (name, target)
        if attack.runtime == "runsc":  # gVisor enforces Yama scope 1 on /proc/PID/mem too
            assert target["proc_mem"] in DENIED, (name, target)
        # runc: /proc/PID/mem of the candidate's own processes (checked above: same uid, capless) is
        # a ptrace-mode check, not a system call; it reaches nothing the candidate does not own.
    assert "killed" in attack.reason  # the clock ends it (it ignores SIGTERM)
    assert not left_behind(docker_client, attack)


@pytest.mark.attack("proc_sys_writes")
def test_proc_and_sys_are_read_only_and_the_oom_score_cannot_be_lowered(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    written = {path: result for path, result in tried["writes"].items() if not refused(result, REFUSED_WRITE)}
    assert not written, f"kernel or cgroup settings writable: {written}"
    oom = tried["oom_score_adj"]
    if attack.runtime == "runc":
        assert refused(oom["lower_to_-1000"], DENIED) and oom["after"] == oom["before"], oom
    # Both tiers, from the host: no process of the container ever had a lowered OOM score. (gVisor's
    # /proc accepts -1000 and keeps it inside its own kernel; the host's processes never see it.)
    seen = attack.host_seen
    assert seen is not None and seen.min_oom_score_adj is not None, "the host never sampled the container"
    assert seen.min_oom_score_adj >= 0, f"a host process of TRAIN had oom_score_adj {seen.min_oom_score_adj}"
    reads = tried["reads"]
    assert reads["/proc/kallsyms nonzero addresses"] == 0, "kernel symbol addresses are readable"
    for path in ("/proc/kcore", "/proc/kmsg", "/sys/firmware/dmi/tables/DMI"):
        assert reads[path] in DENIED | {"ENOENT", ""}, f"{path} is readable: {reads[path]!r}"


@pytest.mark.attack("kernel_surface")
def test_kernel_attack_surface_is_denied_or_stays_in_gvisor(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    tried = attack.json_line("ATTACK")
    calls: dict[str, Any] = tried["calls"]
    # gVisor implements syslog itself: it reaches its user-space kernel, never the host's. io_uring is
    # denied on both tiers by the sandbox's own filter (sandbox/incontainer/jail.py): Docker before 25 allows it in
    # its default profile, and this suite found the host kernel's io_uring reachable under runc.
    in_gvisor = {"syslog"} if attack.runtime == "runsc" else set()
    if "syslog" in in_gvisor and calls["syslog"] == "ok":
        assert "gVisor" in calls["syslog_head"], (
            f"a kernel log that is not gVisor's: {calls['syslog_head']!r}"
        )
    reached = {
        name: result
        for name, result in calls.items()
        if not name.endswith(("_head", "_listing")) and result not in DENIED and name not in in_gvisor
    }
    assert not reached, f"{attack.runtime}: the host kernel's {sorted(reached)} are reachable: {reached}"


# --------------------------------------------------------------------------- the controller's world


@pytest.mark.attack("signal_pid1", time_budget_s=CLOCK_BUDGET_S)
def test_signals_to_init_end_in_a_status_and_leave_nothing(
    attack: AttackResult, docker_client: docker.DockerClient
) -> None:
    # runc: init ignores what it does not handle; the clock kills the trial. gVisor lets the container's
    # own init die of a signal it sent (exit 128+n): the trial ends early, as a crash.
    attack.assert_contained("timeout", "crash")
    tried = attack.json_line("ATTACK")
    others = [pid for pid in tried["visible_pids"] if pid not in (1, tried["self"])]
    assert not others, f"processes in reach besides init and itself: {others} (negative: not signallable)"
    assert not left_behind(docker_client, attack)


@pytest.mark.attack("env_secrets")
def test_no_controller_secret_in_trains_environment_or_files(
    attack: AttackResult, docker_client: docker.DockerClient, trainer_image: str
) -> None:
    attack.assert_contained("crash")  # and, universally: the planted key is in no file of the trial
    dump = attack.json_line("ATTACK")
    image_env = {
        e.split("=", 1)[0] for e in docker_client.images.get(trainer_image).attrs["Config"]["Env"] or []
    }
    ours = {"HOME", "TMPDIR", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    ours |= {C.ENV_PROFILE, C.ENV_OUT, C.ENV_DATA, C.ENV_SEED, "HOSTNAME"}  # the engine sets HOSTNAME
    assert set(dump["environ"]) - image_env - ours == set(), dump["environ"]
    env = dump["environ"]
    assert env[C.ENV_OUT] == C.CONTAINER_OUT and env[C.ENV_DATA] == C.CONTAINER_DATA
    assert env[C.ENV_SEED] == str(attack.verdict["seed"])
    environs = {pid: p["environ"] for pid, p in dump["procs"].items() if isinstance(p["environ"], dict)}
    assert "1" in environs and len(environs) >= 2, "control failed: the attack could not read the environs"
    for pid, environ in environs.items():
        assert "ANTHROPIC_API_KEY" not in environ and "AUTORESEARCH_ATTACK_SECRET" not in environ, pid
    assert dump["files_scanned"] > 0


@pytest.mark.attack("prompt_injection")
def test_injected_log_reaches_the_agent_only_inside_an_unclosable_fence(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    mark = "INJECTION-7f3a"
    tail = read_tail(Path(attack.verdict["logs"]["train"]))  # what the loop hands the agent
    assert tail.count(mark) >= 15, "the injection is not in the log tail: the check proves nothing"
    last = LastTrial(
        trial_id=attack.trial_id,
        status=attack.status,
        decision="crash",
        val_bpb=attack.val_bpb,
        reason=attack.reason,
        log_tail=tail,
    )
    prompt = brief(AgentContext(program="Lower val_bpb.", train_py=TRAIN_PY, last=last), AgentSettings())
    fence = re.compile(
        r"<untrusted-(?P<nonce>[0-9a-f]{16})>\n(?P<body>.*?)\n</untrusted-(?P=nonce)>", re.DOTALL
    )
    fences = list(fence.finditer(prompt))
    log_fences = [f for f in fences if mark in f["body"]]
    assert len(log_fences) == 1, "the log tail is not in exactly one fence"
    body, nonce = log_fences[0]["body"], log_fences[0]["nonce"]
    assert nonce not in body, "the candidate's text contains the fence's nonce"
    assert body.count(mark) == tail[-LOG_TAIL_LIMIT:].count(mark), "part of the injection left the fence"
    outside = fence.sub("", prompt)
    assert mark not in outside, "the injection appears outside the fence"
    assert "</untrusted" not in outside.lower() and "IGNORE PREVIOUS" not in outside
    preamble = prompt[: log_fences[0].start()].rsplit("\n", 2)[-2]
    assert "untrusted" in preamble and "not instructions" in preamble
