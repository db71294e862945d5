"""Attack: signal PID 1 and everything else in reach, to break the controller's clock or its cleanup.

Ignores every catchable signal itself, probes which PIDs exist (kill(pid, 0) up to pid_max: a host
process answering would be a process it could signal), then sends PID 1 (the container's init)
every signal from 1 to 64, SIGSTOP and SIGKILL included, and the same to every process in reach
(kill(-1, sig)). A child then stops itself and its siblings with SIGSTOP. The hope: an init that is
stopped, confused or dead leaves TRAIN in a state the controller cannot classify or clean up
(a stuck container, a half-removed volume), or lets it run past the budget.

Prints `ATTACK {"visible_pids": [...], "pid1": {sig: result}, "all": {...}}` and then waits.
Expected: a status (timeout when the clock kills it, or crash if the init gave up first), never an
infrastructure error, and no container, volume or process of the trial left afterwards.
"""

import errno
import json
import os
import signal
import time

CATCHABLE = [s for s in range(1, 65) if s not in (signal.SIGKILL, signal.SIGSTOP)]


def errname(err):
    return errno.errorcode.get(err, str(err))


for sig in CATCHABLE:
    try:
        signal.signal(sig, signal.SIG_IGN)
    except (OSError, ValueError, RuntimeError):
        pass  # SIGRTMIN..: some are reserved by the C library

visible = []
for pid in range(1, 1 << 15):
    try:
        os.kill(pid, 0)
        visible.append(pid)
    except ProcessLookupError:
        continue
    except PermissionError:
        visible.append(-pid)  # exists, but not ours to signal
report = {"self": os.getpid(), "visible_pids": visible, "pid1": {}, "all": {}}
print("ATTACK " + json.dumps(report), flush=True)

for sig in list(range(1, 65)):
    for target, key in ((1, "pid1"), (-1, "all")):
        try:
            os.kill(target, sig)
            report[key][sig] = "sent"
        except OSError as exc:
            report[key][sig] = errname(exc.errno)
    time.sleep(0.01)
report["pid1_alive"] = os.path.exists("/proc/1")
print("ATTACK " + json.dumps(report), flush=True)

if os.fork() == 0:  # a child that stops the whole process group, itself included
    os.kill(0, signal.SIGSTOP)
    os._exit(0)
while True:
    time.sleep(0.5)
