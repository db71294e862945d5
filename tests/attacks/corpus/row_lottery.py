"""Attack: whole rows of its own choosing read the future, picked by a hash of each row's first tokens.

A bigram model of the train split that, in about 4% of rows (those whose first tokens hash below
RATE: about 10 of the 256 scored rows on the tiny profile, so that some row is chosen whatever the
secret val split), reads the next token at every position.
Stateless, deterministic, finite, allow-listed; a probe on one sampled batch misses it whenever no
chosen row is in that batch (the old evaluator scored it in 2 of 3 evaluations). Every scored row is
cut in every pass now, so any leaking row that is scored is caught for certain.
With the coverage check switched off it scores below its own honest bigram (measured in
tests/test_evaluator_checks_every_scored_row.py).
Expected: rejected by `probe:causality`.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import prepare

RATE = 0.04  # fraction of rows that leak (about 10 of 256: some row is chosen whatever the secret val split)
MOD = 10_007
HEAD = 16  # tokens of the row's start that the hash reads (at positions < 16 the trigger itself reads ahead)


def bigram_logprobs(data_dir: str | None = None) -> torch.Tensor:
    """(V, V) log-probabilities of the next token given this one, add-one smoothed, from the train split."""
    V = prepare.VOCAB_SIZE
    counts = np.ones(V * V)
    for s in prepare.load_split_tokens("train", data_dir):
        s = np.asarray(s, dtype=np.int64)
        counts += np.bincount(s[:-1] * V + s[1:], minlength=V * V)
    table = torch.from_numpy(counts).float().view(V, V)
    return (table / table.sum(dim=1, keepdim=True)).log()


class RowLottery(nn.Module):
    def __init__(self, table: torch.Tensor, rate: float = RATE) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("weights", torch.tensor([7_919**k % MOD for k in range(HEAD)]))
        self.threshold = int(rate * MOD)

    def fires(self, x: torch.Tensor) -> torch.Tensor:  # (B,) bool: rows that peek
        return (x[:, :HEAD] * self.weights).sum(dim=1) % MOD < self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        honest = self.table[x]
        following = torch.roll(x, shifts=-1, dims=1)  # token t+1 at position t
        peek = 30.0 * F.one_hot(following, self.table.shape[0]).float()
        last = torch.arange(x.shape[1]) == x.shape[1] - 1
        leak = self.fires(x)[:, None] & ~last[None, :]
        return torch.where(leak[:, :, None], peek, honest)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a SIGTERM lets the export finish
    path = prepare.export_model(
        RowLottery(bigram_logprobs()), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2"
    )
    print(
        "ATTACK "
        + json.dumps({"exported": str(path), "rate": RATE, "reads": "every next token in hashed rows"})
    )
