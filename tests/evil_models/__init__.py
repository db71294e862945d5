"""Small models and artifact surgery for the evaluator's tests: one honest model, many dishonest ones.

Every model maps int64 (B, T) token ids to (B, T, V) logits at the tiny profile's T and V but with a
width of 16, so exporting and scoring one takes about a second. The dishonest ones each break exactly
one rule; ``export`` bypasses ``prepare.export_model``'s own shape check so that broken graphs can be
written at all. The zip helpers rewrite an honest archive member by member, the way an attacker with
write access to the output folder would.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prepare import PROFILES

PROFILE = PROFILES["tiny"]
T, V, D = PROFILE.max_seq_len, PROFILE.vocab_size, 16
# The tiny profile's shapes and limits, but 3 scoring batches of 8 rows instead of 16 of 32: the tests
# check the evaluator's decisions, not the metric's value on the full split.
FAST_PROFILE = dataclasses.replace(PROFILE, eval_batch_size=8, eval_tokens=3 * 8 * T)


class Honest(nn.Module):
    """A one-layer causal transformer: causal SDPA, per-row, deterministic."""

    def __init__(self, vocab: int = V, dim: int = D) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def attend(self, h: torch.Tensor, causal: bool = True) -> torch.Tensor:
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, T, D) each
        return h + F.scaled_dot_product_attention(q, k, v, is_causal=causal).squeeze(1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.attend(self.wte(idx)))


class NonCausal(Honest):
    """Attends to the future: position t sees the token it is asked to predict."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.attend(self.wte(idx), causal=False))


class RowMixing(Honest):
    """Mixes the batch: at position t every row sees the batch mean of all rows' prefix means up to t.
    It is causal within each row's timeline (nothing after t), so only a check that changes the other
    rows can catch it; it reads their text itself, not just BOS, so it carries real information."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.attend(self.wte(idx))
        prefix_mean = h.cumsum(dim=1) / torch.arange(1, idx.shape[1] + 1)[None, :, None]
        return self.head(h + prefix_mean.mean(dim=0, keepdim=True))


class NaNLogits(Honest):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) * float("nan")


class BufferMutation(Honest):
    """Counts its calls in a buffer: state that would let it answer probes and scoring differently."""

    calls: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return super().forward(idx) + 0 * self.calls


class ExtraOutput(Honest):
    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        h = self.attend(self.wte(idx))
        return self.head(h), h


class FloatInput(Honest):
    """Takes float token ids: the contract's input is int64."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx.long())


class WrongVocab(Honest):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(D, V + 1)


class RandomNoise(Honest):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits + 1e-3 * torch.rand_like(logits)


class Uninitialized(Honest):
    """Reads uninitialized memory, where freed buffers of validation tokens may linger."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits + 0 * torch.empty_like(logits).nan_to_num()


@torch.library.custom_op("evil_test::peek", mutates_args=())
def peek(x: torch.Tensor) -> torch.Tensor:
    """An opaque custom op: whatever it computes, the evaluator cannot see inside it."""
    return x.clone()


@peek.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(Honest):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return peek(super().forward(idx))


def export(
    model: nn.Module, out_dir: Path, *, dtype: torch.dtype = torch.int64, dynamic: bool = True
) -> Path:
    """torch.export ``model`` to ``out_dir/model.pt2`` (dynamic batch unless told otherwise)."""
    model.eval()
    example = torch.randint(0, V, (2, T)).to(dtype)
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt2"
    torch.export.save(program, path)
    return path


def rewrite_zip(
    src: Path,
    dst: Path,
    edit: Callable[[str, bytes], bytes | None] = lambda n, b: b,
    add: dict[str, bytes] | None = None,
    compress: int = zipfile.ZIP_STORED,
) -> None:
    """Copy an archive member by member: ``edit(rel_name, data)`` returns new bytes, or None to drop it.
    ``rel_name`` is the path below the archive's root folder; ``add`` members are given the same way."""
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        root = names[0].split("/", 1)[0]
        members = [(n.split("/", 1)[1], zin.read(n)) for n in names]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for rel, data in members:
            new = edit(rel, data)
            if new is not None:
                zout.writestr(f"{root}/{rel}", new)
        for rel, data in (add or {}).items():
            zout.writestr(f"{root}/{rel}", data, compress_type=compress)


def append_raw_member(path: Path, info: zipfile.ZipInfo, data: bytes) -> None:
    """Append a member with a hand-made header (any name, any mode bits) to an existing archive."""
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(info, data)


def edit_json(rel: str, fn: Callable[[Any], None]) -> Callable[[str, bytes], bytes | None]:
    """An ``edit`` for ``rewrite_zip`` that applies ``fn`` to the parsed JSON member ``rel``."""
    import json

    def edit(name: str, data: bytes) -> bytes | None:
        if name != rel:
            return data
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return edit


class _Payload:
    """Pickles to ``os.system(command)``: what a hostile sample_inputs pickle looks like."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)


def malicious_torch_save(command: str) -> bytes:
    """A torch.save-format archive whose data.pkl runs ``command`` when unpickled without weights_only."""
    buffer = io.BytesIO()
    torch.save((_Payload(command),), buffer)
    return buffer.getvalue()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "honest": Honest,
    "non_causal": NonCausal,
    "row_mixing": RowMixing,
    "nan_logits": NaNLogits,
    "buffer_mutation": BufferMutation,
    "extra_output": ExtraOutput,
    "wrong_vocab": WrongVocab,
    "random_noise": RandomNoise,
    "custom_op": CustomOp,
    "uninitialized": Uninitialized,
}


def exported(name: str, root: Path) -> Path:
    """The artifact folder of ``MODELS[name]`` under ``root``, exported on first use (once per session).

    ``float_input`` and ``static_batch`` are the honest model exported against the contract."""
    out = root / f"artifact_{name}"
    if not (out / "model.pt2").exists():
        if name == "float_input":
            export(FloatInput(), out, dtype=torch.float32)
        elif name == "static_batch":
            export(Honest(), out, dynamic=False)
        else:
            export(MODELS[name](), out)
    return out
