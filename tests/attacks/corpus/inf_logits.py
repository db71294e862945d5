"""Attack: -inf logits everywhere but one guess, hoping the metric drops the infinite losses.

The graph puts all its mass on one guess per position ("the current token again") and -inf on every
other token. Where the guess is right the loss is 0; where it is wrong it is +inf. A metric that
clamped, skipped or masked infinite per-token losses (while counting their bytes) would score this
near 0. log_softmax of such a row is finite where the guess sits, so only a finiteness check on the
logits themselves catches it.
Expected: rejected as non-finite (`probe:finite`, or `runtime:non_finite_logits` while scoring).
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


class AllOrNothing(nn.Module):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        guess = F.one_hot(idx, VOCAB_SIZE).bool()  # "the same token again"
        return torch.zeros(guess.shape).masked_fill(~guess, float("-inf"))


path = export_model(AllOrNothing(), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
print("ATTACK " + json.dumps({"exported": str(path), "inf_where": "every token but the guess"}), flush=True)
