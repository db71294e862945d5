"""export_model writes a torch.export program that reproduces the model at any batch size.

The exported graph is the only thing that crosses from the TRAIN container to the evaluator, which
calls it with its own batch size. These tests export a small model, load the file back with
torch.export.load (no pickle of candidate objects), and check that batches of 1 and 3 give the same
logits as the eager model, that the input/output contract (int64 (B, MAX_SEQ_LEN) -> (B, MAX_SEQ_LEN,
VOCAB_SIZE)) holds, and that a model breaking the contract is refused at export time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prepare


class TinyLM(torch.nn.Module):
    """Causal enough for the contract: embedding, a cumulative mean over positions, a linear head."""

    def __init__(self, vocab: int = prepare.VOCAB_SIZE, width: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)  # (B, T, C)
        steps = torch.arange(1, idx.shape[1] + 1, device=idx.device, dtype=h.dtype).view(1, -1, 1)
        return self.head(h.cumsum(dim=1) / steps)  # (B, T, V)


def _roundtrip(model: torch.nn.Module, path: Path, device: str) -> None:
    written = prepare.export_model(model, path)
    assert written == path and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    program = torch.export.load(path)
    for batch in (1, 3):
        x = torch.randint(0, prepare.VOCAB_SIZE, (batch, prepare.MAX_SEQ_LEN), device=device)
        out = program.module()(x)
        assert out.shape == (batch, prepare.MAX_SEQ_LEN, prepare.VOCAB_SIZE)
        with torch.no_grad():
            torch.testing.assert_close(out.float(), model(x).float())


def test_export_round_trips_on_cpu_with_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM().train()
    _roundtrip(model, tmp_path / "model.pt2", "cpu")
    assert not model.training  # exported in eval mode


def test_export_refuses_a_model_that_breaks_the_output_contract(tmp_path: Path) -> None:
    class WrongVocab(TinyLM):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return super().forward(idx)[..., :-1]

    with pytest.raises(ValueError, match="logits"):
        prepare.export_model(WrongVocab(), tmp_path / "model.pt2")
    assert not (tmp_path / "model.pt2").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_export_round_trips_on_cuda_in_bfloat16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM().to("cuda", torch.bfloat16)
    _roundtrip(model, tmp_path / "model.pt2", "cuda")
