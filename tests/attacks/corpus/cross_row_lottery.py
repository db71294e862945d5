"""Attack: a few rows of its own choosing learn from the other rows of their batch.

A bigram model of the train split; in rows whose first tokens hash below RATE (about 5%), it mixes
in a bigram fitted at scoring time on the OTHER rows of the batch (its own row's pairs subtracted, so
it never reads its own future): test-time fitting on validation text, confined to a few rows chosen
by content. A probe on one sampled batch sees it only when a chosen row is in that batch. Every row is
now also run in a shuffled batch (other rows, their suffixes replaced), so any chosen row that is
scored moves and is caught.
With the coverage check switched off it scores below its own honest bigram (measured in
tests/test_evaluator_checks_every_scored_row.py).
Expected: rejected by `probe:causality` or `probe:row_independence` (the other rows' later tokens
change in both passes).
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

import prepare

RATE = 0.05  # fraction of rows that read the others (about 13 of 256)
MOD = 10_007
HEAD = 16
MIX = 0.3  # weight of the batch-fitted bigram in a chosen row


def bigram_logprobs(data_dir: str | None = None) -> torch.Tensor:
    """(V, V) log-probabilities of the next token given this one, add-one smoothed, from the train split."""
    V = prepare.VOCAB_SIZE
    counts = np.ones(V * V)
    for s in prepare.load_split_tokens("train", data_dir):
        s = np.asarray(s, dtype=np.int64)
        counts += np.bincount(s[:-1] * V + s[1:], minlength=V * V)
    table = torch.from_numpy(counts).float().view(V, V)
    return (table / table.sum(dim=1, keepdim=True)).log()


class CrossRowLottery(nn.Module):
    def __init__(self, table: torch.Tensor, rate: float = RATE) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("weights", torch.tensor([7_919**k % MOD for k in range(HEAD)]))
        self.threshold = int(rate * MOD)

    def fires(self, x: torch.Tensor) -> torch.Tensor:  # (B,) bool: rows that read the others
        return (x[:, :HEAD] * self.weights).sum(dim=1) % MOD < self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        B, T = x.shape
        V = self.table.shape[0]
        honest = self.table[x]
        key, nxt = x[:, :-1], x[:, 1:]  # every (token, next token) pair of the batch
        counts = torch.zeros(V * V).index_add(0, (key * V + nxt).reshape(-1), torch.ones(B * (T - 1)))
        same = (x[:, :, None] == key[:, None, :]).float()  # (B, T, T-1): this row's own pairs ...
        own = torch.zeros(B, T, V).scatter_add(2, nxt[:, None, :].expand(B, T, T - 1), same)
        others = counts.view(V, V)[x] - own + 0.01  # ... subtracted: other rows only
        fitted = (others / others.sum(dim=-1, keepdim=True)).log()
        mixed = torch.logaddexp(honest + float(np.log(1 - MIX)), fitted + float(np.log(MIX)))
        return torch.where(self.fires(x)[:, None, None], mixed, honest)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a SIGTERM lets the export finish
    path = prepare.export_model(
        CrossRowLottery(bigram_logprobs()), Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2"
    )
    print(
        "ATTACK " + json.dumps({"exported": str(path), "rate": RATE, "reads": "other rows, in hashed rows"})
    )
