"""Attack: a model that reads the future. The logits at position t are a one-hot of token t+1.

This is the cheapest cheat there is on a next-token metric: the evaluator hands the model the whole
row x (B, T) and scores position t against x[t+1], so a graph that looks one step ahead predicts
every target exactly. If it were scored, val_bpb would be about 0.03 (measured on the tiny split),
far below a unigram model. The graph is otherwise perfectly ordinary: finite, deterministic, per-row,
exported with prepare.export_model.
Expected: rejected by the causality probe (`probe:causality`).
"""

# ruff: noqa: E402  (the SIGTERM handler goes in before the slow imports)
import signal

signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as train.py: a SIGTERM lets the export finish

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prepare import VOCAB_SIZE, export_model


class Peek(nn.Module):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        following = torch.roll(idx, shifts=-1, dims=1)  # (B, T): token t+1 at position t
        return 20.0 * F.one_hot(following, VOCAB_SIZE).float()


path = export_model(Peek(), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
print("ATTACK " + json.dumps({"exported": str(path), "reads": "token t+1 at position t"}), flush=True)
