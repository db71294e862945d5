#!/usr/bin/env bash
# Make sure a Docker engine answers, with gVisor (runsc) registered as a runtime.
#
# Idempotent: when `docker info` already works and runsc is registered (or not installed), it does
# nothing. Otherwise, as root on a Debian-like host, it installs what is missing (docker.io,
# debootstrap, runsc), merges the runsc runtime into /etc/docker/daemon.json without touching other
# keys, and starts dockerd in the background (or asks a running one to reload its configuration with
# SIGHUP, which keeps running containers alive). It never stops an engine it did not start.
#
# Environment:
#   DOCKERD_LOG        dockerd's log file (default /var/log/dockerd.log)
#   ENGINE_WAIT_S      how long to wait for the socket (default 60)
#   DAEMON_JSON        daemon configuration file (default /etc/docker/daemon.json)
#   RUNSC_PLATFORM     gVisor platform (default ptrace: works without KVM and inside VMs)
#   SKIP_APT=1         never call apt-get
#
# `ensure-engine.sh --config-only` merges the runsc runtime into $DAEMON_JSON and prints "changed" or
# "same", touching nothing else (the tests use it on a scratch file).
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
ENGINE_WAIT_S=${ENGINE_WAIT_S:-60}
DAEMON_JSON=${DAEMON_JSON:-/etc/docker/daemon.json}
RUNSC_PLATFORM=${RUNSC_PLATFORM:-ptrace}
PACKAGES=(docker.io debootstrap runsc)

say() { printf 'ensure-engine: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }
runsc_registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
is_root() { [ "$(id -u)" -eq 0 ]; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v runsc >/dev/null 2>&1 || missing+=(runsc)
  [ ${#missing[@]} -eq 0 ] && return 0
  # De-duplicate while keeping the order of PACKAGES.
  local want=() p m
  for p in "${PACKAGES[@]}"; do for m in "${missing[@]}"; do [ "$p" = "$m" ] && { want+=("$p"); break; }; done; done
  if [ "${SKIP_APT:-0}" = 1 ] || ! is_root || ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${want[*]} (not installing: need root, apt-get and SKIP_APT unset)"
    return 0
  fi
  say "installing ${want[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

# Merge {"runtimes": {"runsc": ...}} into daemon.json; other keys are kept. Prints "changed" or "same".
register_runsc() {
  local runsc_path
  runsc_path=$(command -v runsc) || { say "runsc not installed: gVisor runtime not registered"; echo same; return 0; }
  mkdir -p "$(dirname "$DAEMON_JSON")"
  python3 - "$DAEMON_JSON" "$runsc_path" "$RUNSC_PLATFORM" <<'PY'
import json, os, sys
path, runsc, platform = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path) as f:
        text = f.read()
    config = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    config = {}
if not isinstance(config, dict):
    sys.exit(f"{path} is not a JSON object; fix it by hand")
wanted = {"path": runsc, "runtimeArgs": [f"--platform={platform}", "--network=none"]}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == wanted:
    print("same")
else:
    runtimes["runsc"] = wanted
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    print("changed")
PY
}

wait_for_engine() {
  local i
  for ((i = 0; i < ENGINE_WAIT_S; i++)); do
    engine_up && return 0
    sleep 1
  done
  return 1
}

if [ "${1:-}" = --config-only ]; then
  register_runsc
  exit 0
fi

if engine_up && { runsc_registered || ! command -v runsc >/dev/null 2>&1; }; then
  say "engine already running$(runsc_registered && echo ' with runsc registered'); nothing to do"
  exit 0
fi

if ! is_root; then
  engine_up && { say "engine running but runsc is not registered; ask an admin to add it to $DAEMON_JSON"; exit 0; }
  die "the Docker engine is not reachable and this script is not root: start it (sudo make engine) or add yourself to the docker group"
fi

install_missing
command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed (apt-get install docker.io)"
change=$(register_runsc)
[ "$change" = changed ] && say "registered runsc (--platform=$RUNSC_PLATFORM --network=none) in $DAEMON_JSON"

if engine_up; then
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "engine running; asking dockerd (pid $pid) to reload $DAEMON_JSON (SIGHUP keeps containers running)"
    kill -HUP "$pid"
    for _ in 1 2 3 4 5 6 7 8 9 10; do runsc_registered && break; sleep 0.5; done
    runsc_registered && say "runsc registered" || say "WARNING: runsc still not listed by docker info; see $DOCKERD_LOG"
  else
    say "engine running under another manager; restart it yourself to load $DAEMON_JSON"
  fi
  exit 0
fi

# A stale pid file from a killed dockerd blocks a new start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi
mkdir -p "$(dirname "$DOCKERD_LOG")"
say "starting dockerd in the background (log: $DOCKERD_LOG)"
# setsid: dockerd must outlive this script and the shell or CI step that ran it.
setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
disown || true
if wait_for_engine; then
  say "engine up after start; runtimes: $(docker info --format '{{json .Runtimes}}' 2>/dev/null | tr -d '\n')"
else
  tail -n 30 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within ${ENGINE_WAIT_S}s; see $DOCKERD_LOG"
fi
