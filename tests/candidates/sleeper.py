"""Attack: keep running past the time budget (does not handle SIGTERM, so it dies of it)."""

import time

print("sleeping", flush=True)
time.sleep(10**6)
