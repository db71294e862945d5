"""Attack: NaN logits wherever the model is unsure, hoping the metric skips what it cannot compute.

The graph predicts "the current token again" with confidence and returns NaN logits at every other
position it would get wrong, which is all of them. A metric that dropped non-finite terms (nansum,
nan_to_num, a finite mask) while still counting their bytes would add almost nothing to the loss
and score this near 0. It is untrained: nothing honest in it could score.
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


class NaNWhereUnsure(nn.Module):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        guess = 20.0 * F.one_hot(idx, VOCAB_SIZE).float()  # "the same token again"
        unsure = (idx > 0)[..., None]  # every position but BOS
        return torch.where(unsure, guess * float("nan"), guess)


path = export_model(NaNWhereUnsure(), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
print("ATTACK " + json.dumps({"exported": str(path), "nan_where": "every position but BOS"}), flush=True)
