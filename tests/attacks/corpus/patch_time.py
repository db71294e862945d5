"""Attack: slow down the candidate's own clock so that it never sees the budget run out.

Every clock of the time module (time, monotonic, perf_counter, their _ns forms, process_time) is
replaced by one that runs SLOWDOWN times slower than real time. The "training loop" checks its own
deadline (the tiny profile's 30 s budget) on the patched clock, as train.py checks its own, and does
not install a SIGTERM handler. Only once its own clock says the budget is over would it export a
(trivial) model: after 30 * SLOWDOWN real seconds. If the harness trusted the candidate's clock, or
had none of its own, this would get unlimited training time and end `ok`.
Every second of real time it prints `ATTACK {"own_elapsed": ..., "real_elapsed": ...}`.
Expected: timeout, dead of the controller's SIGTERM (exit 143) at the budget, its own clock far
behind the real one. No torch import unless it gets to export (it should not).
"""

import json
import time

SLOWDOWN = 50.0
OWN_BUDGET_S = 30.0  # the tiny profile's TIME_BUDGET, read off prepare.py (importing it pulls in torch)

NAMES = ("time", "monotonic", "perf_counter", "process_time")
REAL = {n: getattr(time, n) for n in NAMES} | {f"{n}_ns": getattr(time, f"{n}_ns") for n in NAMES}
ORIGIN = {n: f() for n, f in REAL.items()}


def slowed(name: str):
    real, origin = REAL[name], ORIGIN[name]
    if name.endswith("_ns"):
        return lambda: origin + int((real() - origin) / SLOWDOWN)
    return lambda: origin + (real() - origin) / SLOWDOWN


for name in REAL:
    setattr(time, name, slowed(name))

start, real_start = time.time(), REAL["time"]()
last = 0.0
steps = 0
while time.time() - start < OWN_BUDGET_S:
    steps += 1  # "training"
    if REAL["time"]() - last >= 1.0:
        last = REAL["time"]()
        seen = {"own_elapsed": time.time() - start, "real_elapsed": last - real_start, "steps": steps}
        print("ATTACK " + json.dumps(seen), flush=True)
    time.sleep(0.01)

# Only reached if nobody stopped it: export what it "trained".
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from prepare import VOCAB_SIZE, export_model  # noqa: E402

export_model(torch.nn.Embedding(VOCAB_SIZE, VOCAB_SIZE), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
print("ATTACK " + json.dumps({"exported_after_real_s": REAL["time"]() - real_start}), flush=True)
