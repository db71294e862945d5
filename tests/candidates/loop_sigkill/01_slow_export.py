# description: wait a few seconds, then export an untrained per-token model
"""A slow honest candidate: its TRAIN container stays up for a few seconds before it exports.

tests/test_loop_survives_sigkill_on_the_real_engine.py replays it as the first candidate and kills
the controller while this sleeps, so the window between "TRAIN is running" and "TRAIN has exited" is
wide even on a loaded machine. Otherwise it is tests/candidates/tiny_export.py (a different text, so
the loop does not reject it as "no change" against that baseline).
"""

import os
import time
from pathlib import Path

SLEEP_S = 4.0

print(f"sleeping {SLEEP_S:.0f} s before exporting", flush=True)
time.sleep(SLEEP_S)

import torch  # noqa: E402  (after the sleep on purpose: the window opens as soon as Python starts)
import torch.nn as nn  # noqa: E402

from prepare import VOCAB_SIZE, export_model  # noqa: E402


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, 16)
        self.head = nn.Linear(16, VOCAB_SIZE)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.head(self.embed(idx))


torch.manual_seed(int(os.environ.get("AUTORESEARCH_SEED", "0")))
export_model(Bigram(), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
print("exported")
