"""Attack: show the evaluator a junk model.pt2 while it waits beside TRAIN, then deliver a real one.

Junk is in the output channel from the first instant; the honest export replaces it only seconds
later, just before exit. An evaluator that looked at the channel before TRAIN ended (instead of after
its go) would judge the junk and reject the trial; one that waits scores the real graph. The mirror
image, a real graph shown early and swapped for junk at the end, is the attack this makes impossible.
"""

import os
import time
from pathlib import Path

out = Path(os.environ["AUTORESEARCH_OUT"])
(out / "model.pt2").write_bytes(b"PK\x03\x04 not yet: the real artifact comes later " * 64)
time.sleep(6)  # the pre-warmed evaluator is ready well before this

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from prepare import VOCAB_SIZE, export_model  # noqa: E402


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, 16)
        self.head = nn.Linear(16, VOCAB_SIZE)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.head(self.embed(idx))


torch.manual_seed(0)
tmp = out / "model.tmp"
export_model(Bigram(), tmp)
os.replace(tmp, out / "model.pt2")
print("exported")
