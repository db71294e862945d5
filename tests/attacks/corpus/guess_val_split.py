"""Attack: regenerate the validation split from the public corpus generator and memorise it.

The tiny corpus comes from a deterministic grammar (sandbox/data/corpus.py: public code anyone could paste
here, and the suite's runner does paste it, since the trainer image holds only sandbox/incontainer/). While the val split was derived from it, val was every 4th document of
`generate(3_000_000, 0x5EED_7A1E_2024_0001)`, so a candidate could rebuild it inside TRAIN. This one
does, and exports a memoriser of the rebuilt val documents: a backoff n-gram over contexts of 3, 6,
12 and 24 tokens (exact 40-bit hashed keys looked up with `searchsorted`, each with its most frequent
next token and a confidence) over a bigram, as an allow-listed torch graph. On the old split it recalls
almost every val token and scores a few hundredths of a bit per byte, far below the honest baseline
(about 0.35); against a secret val split it is just an overconfident n-gram of 785 kB of public text.

It prints `ATTACK <json>`: whether the regenerated corpus matches the old pin (the attack really had the
old val split in hand), `believed_val_bpb` (its own val_bpb, with prepare's metric, on the documents it
believes are val: what it scores if the guess is right), and CPU/wall seconds per phase. Expected:
status ok, with a val_bpb many times believed_val_bpb; with a derivable val split, the two are equal.

Its target is the val split, not the clock, so its test gives it a long budget; it still keeps to one
thread, measures itself before exporting, prints what it knows on SIGTERM (an export running late gets
the grace period) and exits as soon as model.pt2 is written. About 6 s of CPU on the host, 15 s under
gVisor's ptrace platform, most of it torch's import and export.
"""

# ruff: noqa: E402  (the clock starts before the imports: start-up counts against the budget too)
import time

T_START = time.time()

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: light on a shared machine

import hashlib
import json
import signal
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import prepare

# The generator, pasted in by the suite's runner (tests/attacks/conftest.py) as an attacker would paste it.
CORPUS_SOURCE = ""  # @paste sandbox/data/corpus.py
if not CORPUS_SOURCE:
    print("ATTACK_FAILED the generator's source was not pasted in (run this through tests/attacks)")
    raise SystemExit(1)
corpus = types.ModuleType("pasted_corpus")
sys.modules[corpus.__name__] = corpus  # dataclasses look their module up
exec(compile(CORPUS_SOURCE, "pasted_corpus.py", "exec"), corpus.__dict__)

OLD_SEED = 0x5EED_7A1E_2024_0001  # the old contract: generate(OLD_TARGET_BYTES, OLD_SEED) ...
OLD_TARGET_BYTES = 3_000_000
OLD_VAL_EVERY = 4  # ... and document i was val iff i % 4 == 3
OLD_CORPUS_SHA256 = "fad1b6c8737aae7ac8aee33682a26a69a2703619ba6d60a5c39e1a3996c27e50"
ORDERS = (3, 6, 12, 24)  # context lengths, in tokens, of the lookup tables
BETA = 0.05  # confidence: alpha = top count / (count + BETA * distinct continuations); small = memorise
P, A = 1_099_511_627_689, 1_000_003  # keys: a polynomial hash mod the largest prime < 2**40
SELF_EVAL_TOKENS = 8 * prepare.MAX_SEQ_LEN  # enough to tell 0.05 from 0.5 bpb

OUT = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
torch.set_num_threads(1)
facts: dict[str, object] = {}


def report(*_: object) -> None:
    facts["seconds"] = round(time.time() - T_START, 2)
    facts["cpu_s"] = round(time.process_time(), 2)
    print("ATTACK " + json.dumps(facts), flush=True)


def on_sigterm(*_: object) -> None:  # the budget ran out: say what we know, and let the export finish
    facts["sigterm"] = True
    report()


signal.signal(signal.SIGTERM, on_sigterm)


def stream_of(tok: prepare.Tokenizer, docs: list[str]) -> np.ndarray:
    """BOS, doc tokens, BOS, ...: exactly prepare's layout of a split."""
    ids = tok.encode(docs, prepend=prepare.BOS_ID)
    return np.concatenate([np.asarray(d, dtype=np.int64) for d in ids])


K = max(ORDERS)
# WEIGHTS[i, o]: the weight of window slot i (slot K - 1 is the newest token) in order o's key, A^age.
WEIGHTS = np.array(
    [[pow(A, K - 1 - i, P) if i >= K - k else 0 for k in ORDERS] for i in range(K)], dtype=np.int64
)  # each < 2**40, times a token id + 1 <= 2**11, summed over K <= 32 slots: < 2**56, no overflow


def context_keys(s: np.ndarray) -> np.ndarray:
    """(len(s), len(ORDERS)): key of the k tokens ending at each position, for each order k.

    key = sum_j (s[t-j]+1) A^j mod P; positions before the start count as 0, so a key is only looked up
    where the whole context exists. The exported graph computes exactly the same.
    """
    padded = np.concatenate([np.zeros(K - 1, dtype=np.int64), s + 1])
    windows = np.lib.stride_tricks.sliding_window_view(padded, K)  # (len(s), K)
    return (windows @ WEIGHTS) % P


def build_table(s: np.ndarray, k: int, all_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted context keys, each one's most frequent next token, and the weight it gets."""
    keys = all_keys[k - 1 : -1]  # complete contexts that have a next token
    pairs = np.sort(keys << 11 | s[k:])  # key < 2**40, token < 2**11: one int64 sort groups the pairs
    new_pair = np.ones(len(pairs), dtype=bool)
    new_pair[1:] = pairs[1:] != pairs[:-1]
    starts = np.flatnonzero(new_pair)
    pair_key, pair_next = pairs[starts] >> 11, pairs[starts] & 2047
    pair_count = np.diff(np.append(starts, len(pairs)))
    by_count = np.argsort(pair_key << 20 | (2**20 - 1 - pair_count))  # per key, most frequent first
    pair_key, pair_next, pair_count = pair_key[by_count], pair_next[by_count], pair_count[by_count]
    first = np.ones(len(pair_key), dtype=bool)
    first[1:] = pair_key[1:] != pair_key[:-1]
    key_starts = np.flatnonzero(first)
    total = np.add.reduceat(pair_count, key_starts)
    distinct = np.diff(np.append(key_starts, len(pair_key)))
    alpha = pair_count[key_starts] / (total + BETA * distinct)
    return pair_key[key_starts], pair_next[key_starts], alpha.astype(np.float32)


class Memoriser(nn.Module):
    """p = bigram, then for each order whose context is in its table: p = (1 - a) p + a onehot(top)."""

    bigram: torch.Tensor  # (V, V) float16: log p(next | current), smoothed towards the unigram
    weights: torch.Tensor  # WEIGHTS

    def __init__(self, s: np.ndarray) -> None:
        super().__init__()
        V = prepare.VOCAB_SIZE
        uni = np.bincount(s, minlength=V)[:V].astype(np.float64) + 1.0
        uni /= uni.sum()
        pair = np.bincount(s[:-1] * V + s[1:], minlength=V * V)[: V * V].reshape(V, V).astype(np.float64)
        bigram = (pair + uni[None, :]) / (pair.sum(1, keepdims=True) + 1.0)
        self.register_buffer("bigram", torch.from_numpy(np.log(bigram)).to(torch.float16))
        all_keys = context_keys(s)
        for o, k in enumerate(ORDERS):
            keys, top, alpha = build_table(s, k, all_keys[:, o])
            self.register_buffer(f"keys{k}", torch.from_numpy(keys))
            self.register_buffer(f"top{k}", torch.from_numpy(top.astype(np.int16)))
            self.register_buffer(f"alpha{k}", torch.from_numpy(alpha))  # float32: 1 - alpha must stay > 0
        self.register_buffer("weights", torch.from_numpy(WEIGHTS))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        B, T = idx.shape
        padded = torch.cat([torch.zeros_like(idx[:, : K - 1]), idx + 1], dim=1)  # (B, T + K - 1)
        windows = padded.unfold(1, K, 1)  # (B, T, K)
        h = (windows.unsqueeze(-1) * self.weights).sum(dim=2) % P  # (B, T, n_orders)
        pos = torch.arange(T, device=idx.device)
        tops, alphas = [], []
        for o, k in enumerate(ORDERS):
            keys, top, alpha = (getattr(self, f"{n}{k}") for n in ("keys", "top", "alpha"))
            at = (
                torch.searchsorted(keys, h[..., o].contiguous().reshape(-1))
                .clamp(max=keys.shape[0] - 1)
                .reshape(B, T)
            )
            hit = (keys[at] == h[..., o]) & (pos >= k - 1)  # a complete context, seen in the regenerated text
            tops.append(top[at].long())
            alphas.append(torch.where(hit, alpha[at].float(), torch.zeros_like(alpha[at].float())))
        # Orders mixed from low to high, p <- (1 - a_k) p + a_k onehot(top_k), written out in closed form:
        # the bigram keeps prod(1 - a_k), order k's top token gets a_k prod_{k' > k}(1 - a_k').
        a = torch.stack(alphas, dim=-1)  # (B, T, n_orders)
        keep = torch.flip(torch.cumprod(torch.flip(1.0 - a, [-1]), dim=-1), [-1])  # prod_{k' >= k}(1 - a)
        later = torch.cat([keep[..., 1:], torch.ones_like(keep[..., :1])], dim=-1)  # prod_{k' > k}
        p = self.bigram[idx].float().exp() * keep[..., :1]  # (B, T, V)
        p = p.scatter_add(-1, torch.stack(tops, dim=-1), a * later)
        return p.log()


def self_bpb(model: nn.Module, docs: list[str], tok: prepare.Tokenizer, token_bytes: torch.Tensor) -> float:
    """prepare's own metric on `docs`, laid out as a val split: the rows the evaluator would score."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "val").mkdir()
        np.save(Path(tmp) / "val" / "shard_00000.npy", stream_of(tok, docs).astype(np.uint16))
        rows = prepare.eval_rows(tmp, n_tokens=SELF_EVAL_TOKENS, seq_len=prepare.MAX_SEQ_LEN)
    with torch.no_grad():
        return prepare.evaluate_bpb(model, rows, token_bytes, batch_size=32).val_bpb


phases: dict[str, list[float]] = {}
facts["phases_cpu_wall_s"] = phases
_last = [0.0, T_START]  # CPU and wall clock at the start of the process


def phase(name: str) -> None:
    """Record the CPU and wall seconds since the previous phase: budget overruns say where they went."""
    now = [time.process_time(), time.time()]
    phases[name] = [round(now[0] - _last[0], 2), round(now[1] - _last[1], 2)]
    _last[:] = now


phase("imports")
docs = corpus.generate(OLD_TARGET_BYTES, OLD_SEED)
believed_val = [d for i, d in enumerate(docs) if i % OLD_VAL_EVERY == OLD_VAL_EVERY - 1]
facts["regenerated_docs"] = len(docs)
facts["believed_val_docs"] = len(believed_val)
old_sha256 = hashlib.sha256("\x00".join(docs).encode("utf-8")).hexdigest()  # documents joined by NUL
facts["old_corpus_sha256_matches"] = old_sha256 == OLD_CORPUS_SHA256
phase("generate")
tok = prepare.load_tokenizer()
token_bytes = prepare.load_token_bytes()
s = stream_of(tok, believed_val)  # memorise what we believe is val, and nothing else
phase("tokenize")
model = Memoriser(s)
facts["table_entries"] = sum(int(getattr(model, f"keys{k}").numel()) for k in ORDERS)
phase("tables")
# How good the cheat is where it guessed right: what it scores if val is the split it rebuilt.
facts["believed_val_bpb"] = round(self_bpb(model, believed_val, tok, token_bytes), 4)
phase("self_measure")
report()
prepare.export_model(model, OUT / "model.pt2")
facts["artifact_mb"] = round((OUT / "model.pt2").stat().st_size / 2**20, 1)
phase("export")
report()
os._exit(0)  # model.pt2 is in place (renamed atomically): skip the interpreter's slow teardown
