"""The judges: each isolation property decided from the probes' concrete facts, never from a claim.

One function per property, `check_x(observed, limits) -> Check`; `judge_all` runs them all. A section
the probe could not observe, or an observation of the wrong shape, fails its property ("not proven"),
never the run: anything that could not be observed is a failure, not a pass. The resource limits'
judges (pids, memory, output cap, the engine's hardening flags) are in limit_checks.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sandbox import constants as C
from sandbox.engine.limits import Limits
from sandbox.preflight.facts import (
    CANARY_NAME,
    ENGINE_SOCKETS,
    READ_ONLY_DIRS,
    READ_ONLY_FILES,
    READ_ONLY_MOUNTS,
    ROOTFS_DIRS,
    WRITABLE_DIRS,
    Check,
    Observed,
    not_proven,
    section,
)
from sandbox.preflight.limit_checks import (
    check_hardening_flags,
    check_memory_limit,
    check_output_cap,
    check_pids_limit,
)

logger = logging.getLogger(__name__)


def check_no_network_egress(obs: Observed, limits: Limits) -> Check:
    """No TCP/UDP path out: not to the internet, not to the host (a live listener counts arrivals)."""
    name = "no_network_egress"
    net, why = section(obs, "network")
    if net is None:
        return not_proven(name, why)
    connected = [f"{h}:{p}" for h, p, r in net["connect"] if r == "connected"]
    sent = [f"{h}:{p}" for h, p, r in net["udp"] if r == "sent"]
    extra_ifaces = [i for i in net["interfaces"] if i != "lo"]
    problems = []
    if connected:
        problems.append(f"TCP connected to {', '.join(connected)}")
    if sent:
        problems.append(f"UDP sent to {', '.join(sent)}")
    if extra_ifaces:
        problems.append(f"interfaces besides lo: {', '.join(extra_ifaces)}")
    if obs.accepted:
        problems.append(f"the host listener accepted connections from {', '.join(obs.accepted)}")
    if not obs.armed:
        problems.append("no host address where the listener was reachable from the host (host path unproven)")
    errors = sorted({r for _, _, r in net["connect"] + net["udp"]})
    detail = "; ".join(problems) or (
        f"interfaces {net['interfaces']}; {len(net['connect'])} TCP and {len(net['udp'])} UDP attempts failed "
        f"({', '.join(errors)}), incl. the host at {', '.join(f'{a}:{obs.listener_port}' for a in obs.armed)} "
        "(its listener got 0)"
    )
    evidence = {
        "interfaces": net["interfaces"],
        "connect": net["connect"],
        "udp": net["udp"],
        "host_addresses_armed": list(obs.armed),
        "listener_port": obs.listener_port,
        "listener_accepted": list(obs.accepted),
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_dns(obs: Observed, limits: Limits) -> Check:
    name = "no_dns"
    net, why = section(obs, "network")
    if net is None:
        return not_proven(name, why)
    resolved = {
        host: r for host, r in net["dns"].items() if not (isinstance(r, str) and r.startswith("error:"))
    }
    detail = (
        f"resolved {resolved}"
        if resolved
        else f"{len(net['dns'])} names failed to resolve ({', '.join(sorted(set(net['dns'].values())))})"
    )
    return Check(
        name=name, passed=not resolved and bool(net["dns"]), detail=detail, evidence={"dns": net["dns"]}
    )


def check_root_fs_read_only(obs: Observed, limits: Limits) -> Check:
    """Nothing of the image or the mounts can be written; only /tmp, /out and /dev/shm (the controls) can."""
    name = "root_fs_read_only"
    writes, why = section(obs, "writes")
    if writes is None:
        return not_proven(name, why)
    mounts = obs.probe.get("mounts")
    root = [m for m in mounts if m["mountpoint"] == "/"][-1:] if isinstance(mounts, list) else []
    root_options = sorted(set(root[0]["options"]) | set(root[0]["super_options"])) if root else []
    problems = []
    written = [d for d in READ_ONLY_DIRS if writes["create"].get(d) == "ok"]
    written += [f for f in READ_ONLY_FILES if writes["open"].get(f) == "ok"]
    missing = [p for p in READ_ONLY_DIRS if p not in writes["create"]] + [
        p for p in READ_ONLY_FILES if p not in writes["open"]
    ]
    if written:
        problems.append(f"writable: {', '.join(written)}")
    if missing:
        problems.append(f"not attempted: {', '.join(missing)}")
    erofs = [d for d in ROOTFS_DIRS if writes["create"].get(d) == "EROFS"]
    if not erofs:
        problems.append("no write on the root filesystem was refused with EROFS (only permissions refused)")
    if "ro" not in root_options:
        mode = [o for o in root_options if o in ("ro", "rw")]
        problems.append(f"the root mount is not ro ({','.join(mode) if root else 'not found'})")
    mount_options = {
        m["mountpoint"]: m["options"] for m in mounts or [] if m["mountpoint"] in READ_ONLY_MOUNTS
    }
    not_ro = [p for p in READ_ONLY_MOUNTS if "ro" not in mount_options.get(p, [])]
    if not_ro:
        problems.append(f"mounts not ro: {', '.join(not_ro)}")
    refused = [d for d in WRITABLE_DIRS if writes["create"].get(d) != "ok"]
    if refused:
        problems.append(f"control failed: cannot write the writable {', '.join(refused)}")
    errnos = sorted({r for r in list(writes["create"].values()) + list(writes["open"].values()) if r != "ok"})
    detail = "; ".join(problems) or (
        f"root and {len(READ_ONLY_MOUNTS)} mounts ro; {len(READ_ONLY_DIRS) + len(READ_ONLY_FILES)} writes refused "
        f"({', '.join(errnos)}; EROFS at {', '.join(erofs)}); {', '.join(WRITABLE_DIRS)} writable"
    )
    evidence = {
        "create": writes["create"],
        "open": writes["open"],
        "root_mount_options": root_options,
        "erofs": erofs,
        "read_only_mounts": mount_options,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_non_root_user(obs: Observed, limits: Limits) -> Check:
    name = "non_root_user"
    ident, why = section(obs, "identity")
    if ident is None:
        return not_proven(name, why)
    priv, why = section(obs, "privilege")
    if priv is None:
        return not_proven(name, why)
    ids = [ident["uid"], ident["euid"], ident["gid"], ident["egid"]]
    problems = []
    if 0 in ids:
        problems.append(f"runs as root (uid/euid/gid/egid {ids})")
    if 0 in ident["groups"]:
        problems.append("member of group 0")
    if (ident["uid"], ident["gid"]) != (limits.uid, limits.gid):
        problems.append(f"uid:gid {ident['uid']}:{ident['gid']}, expected {limits.uid}:{limits.gid}")
    if priv["setuid_0"] == "ok":
        problems.append("setuid(0) succeeded")
    detail = "; ".join(problems) or (
        f"uid {ident['uid']} gid {ident['gid']} groups {ident['groups']}; setuid(0) -> {priv['setuid_0']}"
    )
    return Check(
        name=name, passed=not problems, detail=detail, evidence=ident | {"setuid_0": priv["setuid_0"]}
    )


def check_no_capabilities(obs: Observed, limits: Limits) -> Check:
    name = "no_capabilities"
    status, why = section(obs, "status")
    if status is None:
        return not_proven(name, why)
    priv, why = section(obs, "privilege")
    if priv is None:
        return not_proven(name, why)
    masks: dict[str, str | None] = {
        k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    }
    # The ambient set is a subset of permitted and inheritable, so when a runtime (gVisor) does not report
    # it, CapPrm = CapInh = 0 proves it empty.
    required = [k for k in masks if k != "CapAmb" or masks[k] is not None]
    problems = [f"{k}={v}" for k in required if (v := masks[k]) is None or int(v, 16) != 0]
    problems += [f"{attack} succeeded" for attack in ("chown_to_root", "raw_socket") if priv[attack] == "ok"]
    detail = "; ".join(problems) or (
        f"{'='.join(required)}=0; chown to root -> {priv['chown_to_root']}, "
        f"raw socket -> {priv['raw_socket']}"
    )
    evidence = masks | {"chown_to_root": priv["chown_to_root"], "raw_socket": priv["raw_socket"]}
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_new_privileges(obs: Observed, limits: Limits) -> Check:
    name = "no_new_privileges"
    status, why = section(obs, "status")
    if status is None:
        return not_proven(name, why)
    scan = obs.probe.get("scan")
    setuid = list(scan.get("setuid", [])) if isinstance(scan, dict) else []
    facts = {"NoNewPrivs": status.get("NoNewPrivs"), "prctl": status.get("prctl_no_new_privs")}
    reported = {k: v for k, v in facts.items() if v is not None}
    passed = bool(reported) and all(str(v) == "1" for v in reported.values())
    detail = (
        f"{', '.join(f'{k}={v}' for k, v in facts.items())}, Seccomp={status.get('Seccomp')}; "
        f"{len(setuid)} setuid/setgid files in the image {'cannot' if passed else 'could'} raise privileges"
    )
    evidence = {
        "NoNewPrivs": status.get("NoNewPrivs"),
        "prctl_no_new_privs": status.get("prctl_no_new_privs"),
        "Seccomp": status.get("Seccomp"),
        "setuid_files": setuid,
    }
    return Check(name=name, passed=passed, detail=detail, evidence=evidence)


def check_no_val_data(obs: Observed, limits: Limits) -> Check:
    """No file in the container matches a validation shard; the same search finds the train shard."""
    name = "no_val_data"
    scan, why = section(obs, "scan")
    if scan is None:
        return not_proven(name, why)
    problems = []
    if scan["hits"]["val"]:
        problems.append(f"validation shards visible at {', '.join(scan['hits']['val'])}")
    if scan["val_dir_exists"]:
        problems.append(f"{C.CONTAINER_DATA}/{C.VAL_DIRNAME} exists")
    if not isinstance(scan["data_listing"], list) or C.VAL_DIRNAME in scan["data_listing"]:
        problems.append(f"{C.CONTAINER_DATA} holds {scan['data_listing']}")
    if not obs.val_fingerprints:
        problems.append(f"no validation shards on the host under {obs.data_dir} to search for")
    if obs.train_fingerprints and not scan["hits"]["train"]:
        problems.append("control failed: the search did not find the mounted train shard either")
    detail = "; ".join(problems) or (
        f"searched {scan['files']} files in {scan['scan_s']} s: none matches the {len(obs.val_fingerprints)} "
        f"val shard(s); train shard found at {scan['hits']['train'][0]}; {C.CONTAINER_DATA} = {scan['data_listing']}"
    )
    evidence = {
        "files_scanned": scan["files"],
        "unreadable": scan["unreadable"],
        "val_hits": scan["hits"]["val"],
        "train_hits": scan["hits"]["train"],
        "val_shards_on_host": len(obs.val_fingerprints),
        "data_listing": scan["data_listing"],
        "val_dir_exists": scan["val_dir_exists"],
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_secrets_in_env(obs: Observed, limits: Limits) -> Check:
    """The controller's secrets (and a canary API key planted for the check) appear in no environment."""
    name = "no_secrets_in_env"
    env, why = section(obs, "env")
    if env is None:
        return not_proven(name, why)
    environs = {"self": env["self"]} | {f"pid {p}": e for p, e in env["procs"].items() if isinstance(e, dict)}
    engine_env = {
        "engine Config.Env": dict(
            e.split("=", 1) for e in (obs.probe_attrs.get("Config") or {}).get("Env") or [] if "=" in e
        )
    }
    leaks = []
    for where, variables in (environs | engine_env).items():
        for secret_name, value in obs.controller_secrets.items():
            if secret_name in variables or any(value in v for v in variables.values()):
                leaks.append(f"{secret_name} in {where}")
    if CANARY_NAME not in obs.controller_secrets:
        leaks.append("the canary was not planted in the controller's environment")
    names = sorted(env["self"])
    detail = "; ".join(leaks) or (
        f"{len(obs.controller_secrets)} controller secret(s) incl. canary {CANARY_NAME} absent from "
        f"{len(environs)} environ(s) and the engine's record; container env: {', '.join(names)}"
    )
    evidence = {
        "secrets_checked": sorted(obs.controller_secrets),
        "leaks": leaks,
        "container_env_names": names,
        "environs_read": sorted(environs),
        "environs_unreadable": sorted(p for p, e in env["procs"].items() if not isinstance(e, dict)),
    }
    return Check(name=name, passed=not leaks, detail=detail, evidence=evidence)


def check_no_engine_socket(obs: Observed, limits: Limits) -> Check:
    name = "no_engine_socket"
    scan, why = section(obs, "scan")
    if scan is None:
        return not_proven(name, why)
    present = [p for p, exists in scan["engine_sockets"].items() if exists]
    mounted = [
        m.get("Source", "")
        for m in obs.probe_attrs.get("Mounts") or []
        if str(m.get("Source", "")).endswith(".sock")
    ]
    problems = []
    if present:
        problems.append(f"present: {', '.join(present)}")
    if scan["sockets"]:
        problems.append(f"socket files: {', '.join(scan['sockets'][:10])}")
    if mounted:
        problems.append(f"sockets mounted from the host: {', '.join(mounted)}")
    detail = "; ".join(problems) or (
        f"none of {len(ENGINE_SOCKETS)} engine socket paths exists; no socket file among {scan['files']} files"
    )
    evidence = {
        "engine_sockets": scan["engine_sockets"],
        "socket_files": scan["sockets"],
        "mounted_sockets": mounted,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


JUDGES: tuple[Callable[[Observed, Limits], Check], ...] = (
    check_no_network_egress,
    check_no_dns,
    check_root_fs_read_only,
    check_non_root_user,
    check_no_capabilities,
    check_no_new_privileges,
    check_pids_limit,
    check_memory_limit,
    check_no_val_data,
    check_output_cap,
    check_no_secrets_in_env,
    check_no_engine_socket,
    check_hardening_flags,
)


def judge_all(obs: Observed, limits: Limits) -> tuple[Check, ...]:
    """Every property's check; an observation of the wrong shape fails its property, never the run."""
    checks = []
    for judge in JUDGES:
        try:
            checks.append(judge(obs, limits))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            name = judge.__name__.removeprefix("check_")
            checks.append(not_proven(name, f"malformed observations ({type(exc).__name__}: {exc})"))
    return tuple(checks)
