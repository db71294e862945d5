#!/usr/bin/env bash
# A second Docker engine with user-namespace remapping (hardening tier "userns-remap"), next to the
# default one, and the trainer image loaded into it.
#
# userns-remap is a daemon-wide setting (every container of a remapped daemon runs in a user namespace
# whose uid 0 is an unprivileged host uid), so it cannot be switched on for the sandbox alone without
# changing the engine everybody else uses. This script never touches the default dockerd, its socket
# or /etc/docker/daemon.json: the second dockerd has its own socket, data-root, exec-root (hence its
# own containerd), pidfile, log and an empty configuration file, its own bridge interface and no
# iptables rules (every sandbox container runs with network "none"). Never `--bridge=none`: a dockerd
# started with it DELETES the interface docker0 (moby's removeDefaultBridgeInterface), which is the
# default engine's bridge, and every bridge-networked container of the default engine then fails
# with "could not find bridge docker0" (seen here, 2026-11-26). So it gets a bridge of its own,
# $USERNS_BRIDGE, created here on an address outside Docker's default pools.
#
#   sandbox/scripts/userns-engine.sh [start]   idempotent: reuse the engine if it answers with userns
#                                              on, else start it; then load the trainer image into it
#                                              when its ID differs from the default engine's; timings
#   sandbox/scripts/userns-engine.sh check     exit 0 if the engine answers with userns on, else 1
#   sandbox/scripts/userns-engine.sh stop      stop the second dockerd (by its pidfile) and nothing else
#   sandbox/scripts/userns-engine.sh env       print `export DOCKER_HOST=...` for the second engine
#
# Use it: DOCKER_HOST=unix:///var/run/docker-userns.sock python -m harness preflight   (or trial, run)
#
# `--userns-remap=default` makes dockerd create the user "dockremap" and give it 65536 subordinate
# uids and gids in /etc/subuid and /etc/subgid (root, useradd). Container uid N is host uid FIRST+N.
# The trainer image is copied with `docker save | docker load` (layers re-extracted with shifted
# owners) rather than rebuilt there, and only when its ID differs from the default engine's. Measured
# on the 2-core dev host, shared (load 1-8): load 28-30 s cold, 18 s after a source-only rebuild
# (the save side still streams 1.08 GB); a rebuild in the remapped engine took 3 s (base image load)
# + 238 s (`python -m sandbox.build build --trainer-only`, torch re-installed).
#
# Exit codes: 0 ready; 1 error; 2 user namespaces unsupported here (the reason is printed and written
# to $USERNS_UNSUPPORTED_FILE, which the tests read and report).
#
# Environment:
#   USERNS_DOCKER_HOST  the second engine's socket (default unix:///var/run/docker-userns.sock)
#   USERNS_DATA_ROOT    its data-root (default /var/lib/docker-userns)
#   USERNS_EXEC_ROOT    its exec-root (default /var/run/docker-userns)
#   USERNS_PIDFILE      its pidfile (default /var/run/docker-userns.pid)
#   USERNS_LOG          its log (default /var/log/dockerd-userns.log)
#   USERNS_BRIDGE       its bridge interface (default docker-userns0; never docker0)
#   USERNS_BRIDGE_CIDR  the bridge's address (default 198.19.213.1/24, a benchmarking range, RFC 2544)
#   USERNS_UNSUPPORTED_FILE  where "unsupported: why" goes (default /var/lib/docker-userns.unsupported)
#   SOURCE_DOCKER_HOST  the engine the image is copied from (default unix:///var/run/docker.sock)
#   USERNS_IMAGES       images to copy (default "autoresearch-trainer:latest")
#   ENGINE_WAIT_S       how long to wait for the socket (default 60)
set -euo pipefail

USERNS_DOCKER_HOST=${USERNS_DOCKER_HOST:-unix:///var/run/docker-userns.sock}
USERNS_DATA_ROOT=${USERNS_DATA_ROOT:-/var/lib/docker-userns}
USERNS_EXEC_ROOT=${USERNS_EXEC_ROOT:-/var/run/docker-userns}
USERNS_PIDFILE=${USERNS_PIDFILE:-/var/run/docker-userns.pid}
USERNS_LOG=${USERNS_LOG:-/var/log/dockerd-userns.log}
USERNS_BRIDGE=${USERNS_BRIDGE:-docker-userns0}
USERNS_BRIDGE_CIDR=${USERNS_BRIDGE_CIDR:-198.19.213.1/24}
USERNS_UNSUPPORTED_FILE=${USERNS_UNSUPPORTED_FILE:-/var/lib/docker-userns.unsupported}
SOURCE_DOCKER_HOST=${SOURCE_DOCKER_HOST:-unix:///var/run/docker.sock}
USERNS_IMAGES=${USERNS_IMAGES:-autoresearch-trainer:latest}
ENGINE_WAIT_S=${ENGINE_WAIT_S:-60}

say() { printf 'userns-engine: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

remapped() { DOCKER_HOST=$USERNS_DOCKER_HOST docker "$@"; }
source_engine() { DOCKER_HOST=$SOURCE_DOCKER_HOST docker "$@"; }

# The engine answers AND says so itself: SecurityOptions carries "name=userns" only when remapping is on.
userns_up() {
  remapped info --format '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=userns'
}

unsupported() {  # unsupported WHY: record the reason for the tests, say it, exit 2
  mkdir -p "$(dirname "$USERNS_UNSUPPORTED_FILE")"
  printf 'unsupported: %s\n' "$*" >"$USERNS_UNSUPPORTED_FILE"
  say "user-namespace remapping is NOT available here: $*"
  exit 2
}

# Facts about the kernel that remapping needs, checked before dockerd is asked (its error is vaguer).
check_kernel() {
  [ -e /proc/self/ns/user ] || unsupported "the kernel has no user namespaces (/proc/self/ns/user missing)"
  local max
  max=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo unknown)
  [ "$max" != 0 ] || unsupported "user namespaces are disabled (/proc/sys/user/max_user_namespaces = 0)"
  # Inside a container (its own uid_map is not the identity) remapping may still work or not: say so,
  # and let dockerd's own error decide below.
  if ! awk 'NR == 1 && $1 == 0 && $2 == 0 && $3 == 4294967295 { ok = 1 } END { exit !ok }' /proc/self/uid_map; then
    say "note: this host runs in a user namespace itself (uid_map: $(tr -s ' ' <<<"$(head -1 /proc/self/uid_map)"))"
  fi
}

# The second engine's own bridge (see the header: --bridge=none would delete the default engine's docker0).
ensure_bridge() {
  [ "$USERNS_BRIDGE" != docker0 ] || die "USERNS_BRIDGE must not be docker0: it belongs to the default engine"
  command -v ip >/dev/null 2>&1 || die "the ip command (iproute2) is needed to create $USERNS_BRIDGE"
  if ! ip link show "$USERNS_BRIDGE" >/dev/null 2>&1; then
    local net=${USERNS_BRIDGE_CIDR%/*}
    if ip -4 route show to match "$net" | grep -qv '^default'; then
      die "$USERNS_BRIDGE_CIDR overlaps a route of this host ($(ip -4 route show to match "$net" | grep -v '^default' | head -1)); set USERNS_BRIDGE_CIDR"
    fi
    ip link add name "$USERNS_BRIDGE" type bridge
    ip addr add "$USERNS_BRIDGE_CIDR" dev "$USERNS_BRIDGE"
    say "created bridge $USERNS_BRIDGE ($USERNS_BRIDGE_CIDR)"
  fi
  ip link set "$USERNS_BRIDGE" up
}

stop_engine() {
  local pid
  pid=$(cat "$USERNS_PIDFILE" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then say "not running"; return 0; fi
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || die "pid $pid in $USERNS_PIDFILE is not a dockerd"
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  die "dockerd (pid $pid) still running after 30 s"
}

start_engine() {
  if userns_up; then
    say "engine already running at $USERNS_DOCKER_HOST with userns-remap; reusing it"
    return 0
  fi
  if remapped info >/dev/null 2>&1; then
    die "an engine answers at $USERNS_DOCKER_HOST but without userns-remap; not touching it"
  fi
  [ "$(id -u)" -eq 0 ] || die "not root: run it as root (sudo make engine-userns)"
  command -v dockerd >/dev/null 2>&1 || die "dockerd is not installed (make engine installs docker.io)"
  check_kernel
  local t0 sock pid
  t0=$(now)
  sock=${USERNS_DOCKER_HOST#unix://}
  pid=$(cat "$USERNS_PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then rm -f "$USERNS_PIDFILE"; fi  # stale: blocks a start
  mkdir -p "$USERNS_DATA_ROOT" "$USERNS_EXEC_ROOT" "$(dirname "$USERNS_LOG")" "$(dirname "$sock")"
  # An empty configuration file of its own: /etc/docker/daemon.json belongs to the default engine.
  local config=$USERNS_DATA_ROOT.daemon.json
  [ -s "$config" ] || echo '{}' >"$config"
  ensure_bridge
  say "starting dockerd --userns-remap=default on $USERNS_DOCKER_HOST (log: $USERNS_LOG)"
  # setsid: the engine must outlive this script and the shell or CI step that ran it.
  setsid nohup dockerd \
    --config-file "$config" \
    --host "$USERNS_DOCKER_HOST" \
    --data-root "$USERNS_DATA_ROOT" \
    --exec-root "$USERNS_EXEC_ROOT" \
    --pidfile "$USERNS_PIDFILE" \
    --userns-remap default \
    --bridge "$USERNS_BRIDGE" --iptables=false --ip-forward=false --ip-masq=false \
    --cgroup-parent /docker-userns \
    >>"$USERNS_LOG" 2>&1 </dev/null &
  pid=$!  # no job control here, so setsid execs dockerd itself: $! is dockerd's pid
  disown || true
  local i
  for ((i = 0; i < ENGINE_WAIT_S * 2; i++)); do
    userns_up && break
    kill -0 "$pid" 2>/dev/null || break  # dockerd exited: its log says why
    sleep 0.5
  done
  if ! userns_up; then
    tail -n 20 "$USERNS_LOG" >&2 || true
    if grep -qiE 'user namespaces|userns|subuid|subgid|newuidmap' <(tail -n 20 "$USERNS_LOG"); then
      unsupported "dockerd --userns-remap=default failed to start: $(grep -iE 'userns|namespace|subuid|subgid' "$USERNS_LOG" | tail -1)"
    fi
    die "dockerd did not answer within ${ENGINE_WAIT_S}s; see $USERNS_LOG"
  fi
  # The engine's data root is <data-root>/<uid>.<gid>, named after the host ids of its container root.
  say "engine up in $(since "$t0") s (pid $(cat "$USERNS_PIDFILE" 2>/dev/null)); container root = host" \
    "uid.gid $(basename "$(remapped info --format '{{.DockerRootDir}}')")"
}

load_images() {
  local image want have t0
  for image in $USERNS_IMAGES; do
    want=$(source_engine image inspect --format '{{.Id}}' "$image" 2>/dev/null) \
      || die "$image is not built on $SOURCE_DOCKER_HOST: run make images first"
    have=$(remapped image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [ "$have" = "$want" ]; then
      say "$image already loaded (${want:7:12})"
      continue
    fi
    t0=$(now)
    say "loading $image (${want:7:12}) into the remapped engine: docker save | docker load"
    source_engine save "$image" | remapped load -q >&2
    local old=$have
    have=$(remapped image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    [ "$have" = "$want" ] || die "after loading, $image is ${have:-missing} there, not $want"
    say "loaded $image in $(since "$t0") s"
    # The image it replaced would only take disk (each rebuild leaves one); a container still using it keeps it.
    if [ -n "$old" ]; then remapped image rm "$old" >/dev/null 2>&1 || say "kept ${old:7:12}: still in use"; fi
  done
}

case "${1:-start}" in
  start)
    T0=$(now)
    rm -f "$USERNS_UNSUPPORTED_FILE"  # a verdict of this run only, never a stale one
    start_engine
    load_images
    say "ready in $(since "$T0") s: DOCKER_HOST=$USERNS_DOCKER_HOST"
    ;;
  check) userns_up ;;
  stop) stop_engine ;;
  env) echo "export DOCKER_HOST=$USERNS_DOCKER_HOST" ;;
  *) die "usage: $0 [start|check|stop|env]" ;;
esac
