"""Attack: ignore SIGTERM to keep the CPU past the budget; only SIGKILL after the grace stops it."""

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(0.1)
