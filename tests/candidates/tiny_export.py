"""A trivial honest candidate: exports an untrained per-token model at once (training time ~0)."""

import os
from pathlib import Path

import torch
import torch.nn as nn

from prepare import VOCAB_SIZE, export_model


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
