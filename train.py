"""
Autoresearch pretraining script: the one file the agent edits. Single device, single file.

Trains a small GPT for the profile's wall-clock budget and exports it to $AUTORESEARCH_OUT/model.pt2 with
prepare.export_model. It never scores itself: a separate, trusted evaluator computes val_bpb from the
exported graph on data this process cannot see. The controller owns the clock (SIGTERM at TIME_BUDGET,
SIGKILL after a grace), so the loop stops at its own advisory deadline or at SIGTERM, whichever comes
first, and always leaves time to export.

Usage: AUTORESEARCH_PROFILE=tiny python train.py
"""

# ruff: noqa: E402  (the clock starts before the imports: start-up counts against the budget too)
import time

T_START = time.time()

import contextlib
import math
import os
import resource
import signal
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, PROFILE, TIME_BUDGET, VOCAB_SIZE, export_model, make_dataloader

# ---------------------------------------------------------------------------
# Hyperparameters (edit freely)
# ---------------------------------------------------------------------------

TINY = PROFILE.name == "tiny"  # tiny: CPU, 2 cores, 30 s. The same model and loop, toy sizes.

# Model size (gpu: about the reference's 50M parameters)
DEPTH = 2 if TINY else 8  # transformer blocks
ASPECT_RATIO = 32 if TINY else 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 32 if TINY else 128  # attention head dimension
VE_GATE_CHANNELS = 32  # input channels the value-embedding gate looks at
LOGIT_SOFTCAP = 15.0  # logits = softcap * tanh(logits / softcap)

# Batch
TOTAL_BATCH_SIZE = 2**11 if TINY else 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 8 if TINY else 128  # rows per forward/backward; gradient accumulation makes up the rest

# Optimizer
MATRIX_LR = 0.04  # Muon, for the 2-D matrices inside the blocks
EMBEDDING_LR = 0.6  # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW, lm_head
SCALAR_LR = 0.5  # AdamW, per-layer residual scalars
WEIGHT_DECAY = 0.2  # Muon's cautious weight decay, decays linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)  # AdamW betas
MUON_MOMENTUM = 0.95  # Muon's Nesterov momentum, reached after a linear ramp up from 0.85
MUON_MOMENTUM_RAMP_STEPS = 50 if TINY else 300  # steps of that ramp

# Schedule, as fractions of the training time (the time between the first step and the deadline)
WARMUP_RATIO = 0.0  # linear LR warmup
WARMDOWN_RATIO = 0.5  # linear LR warmdown at the end
FINAL_LR_FRAC = 0.0  # LR at the end, as a fraction of the peak

# Time
EXPORT_RESERVE_S = 5.0 if TINY else 20.0  # stop training this long before TIME_BUDGET: export, one last step
LOG_EVERY_S = 2.0 if TINY else 5.0  # progress line interval (the log is size-capped; keep it short)

OUT_DIR = Path(os.environ.get("AUTORESEARCH_OUT", "out"))
SEED = int(os.environ.get("AUTORESEARCH_SEED", "0"))

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx, n_layer):
    """Every other layer, the last one always included."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary(x, cos, sin):  # x: (B, T, H, D); cos, sin: (1, T, 1, D/2)
    d = x.size(-1) // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep q, k in the autocast dtype
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head, value_embedding):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        # Value residual (ResFormer): a per-head, input-dependent gate mixes in a token's value embedding
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, n_head, bias=False) if value_embedding else None

    def forward(self, x, ve, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, H), 1.0 at init
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, dim, n_head, value_embedding):
        super().__init__()
        self.attn = CausalSelfAttention(dim, n_head, value_embedding)
        self.mlp = MLP(dim)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """(B, T) int64 token ids -> (B, T, vocab) float32 logits. Pure: no targets, no state, no branches on data."""

    def __init__(self, vocab_size, seq_len, n_layer, dim, n_head):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, dim) for i in range(n_layer) if has_value_embedding(i, n_layer)}
        )
        self.blocks = nn.ModuleList(
            [Block(dim, n_head, has_value_embedding(i, n_layer)) for i in range(n_layer)]
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(n_layer))  # scales the residual stream per layer
        self.x0_lambdas = nn.Parameter(torch.full((n_layer,), 0.1))  # mixes the embedding back in per layer
        # Rotary tables are precomputed buffers: the exported graph must not mutate state in forward
        head_dim = dim // n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)  # (1, T, 1, D/2)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)
        self.reset_parameters(dim)

    @torch.no_grad()
    def reset_parameters(self, dim):
        s = 3**0.5 * dim**-0.5  # uniform bound with std 1/sqrt(dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)

    def forward(self, idx):  # idx: (B, T)
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        logits = self.lm_head(norm(x)).float()  # (B, T, V)
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------

# Polar Express: per-iteration coefficients of an odd polynomial that drives singular values to 1
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def orthogonalize(g):  # g: (N, R, C) stacked matrices -> the nearest semi-orthogonal matrices
    x = g.bfloat16() if g.is_cuda else g  # bf16 is fast on GPU; CPU matmuls stay in float32
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    for a, b, c in POLAR_EXPRESS:
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon (orthogonalized Nesterov momentum) for groups of same-shape matrices, AdamW for the rest."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon(group)
            else:
                self._adamw(group)

    def _adamw(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            state = self.state[p]
            if not state:
                state["step"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
            state["step"] += 1
            p.mul_(1 - group["lr"] * group["weight_decay"])
            state["m"].lerp_(p.grad, 1 - beta1)
            state["v"].lerp_(p.grad.square(), 1 - beta2)
            m_hat = state["m"] / (1 - beta1 ** state["step"])
            v_hat = state["v"] / (1 - beta2 ** state["step"])
            p.add_(m_hat / (v_hat.sqrt() + 1e-10), alpha=-group["lr"])

    def _muon(self, group):
        params = group["params"]
        grads = torch.stack([p.grad for p in params])  # (N, R, C)
        state = self.state[params[0]]
        if not state:
            state["momentum"] = torch.zeros_like(grads)
        state["momentum"].lerp_(grads, 1 - group["momentum"])
        update = orthogonalize(grads.lerp_(state["momentum"], group["momentum"]))  # Nesterov
        rows, cols = params[0].shape
        lr, wd = group["lr"] * max(1.0, rows / cols) ** 0.5, group["weight_decay"]
        for p, u in zip(params, update.unbind(0), strict=True):
            decay = p * ((u * p) >= 0)  # cautious weight decay: only where the update agrees in sign
            p.sub_(lr * (u + wd * decay))


def make_optimizer(model, dim):
    lr_scale = (dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
    matrices = list(model.blocks.parameters())
    shapes = sorted({p.shape for p in matrices})
    groups = [
        dict(kind="adamw", params=list(model.wte.parameters()), lr=EMBEDDING_LR * lr_scale),
        dict(kind="adamw", params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * lr_scale),
        dict(kind="adamw", params=list(model.lm_head.parameters()), lr=UNEMBEDDING_LR * lr_scale),
        dict(kind="adamw", params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(kind="adamw", params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ] + [
        dict(
            kind="muon",
            params=[p for p in matrices if p.shape == shape],
            lr=MATRIX_LR,
            momentum=0.85,
            weight_decay=WEIGHT_DECAY,
        )
        for shape in shapes
    ]
    for group in groups:
        group.setdefault("betas", ADAM_BETAS)
        group.setdefault("weight_decay", 0.0)
        group["initial_lr"] = group["lr"]
    optimizer = MuonAdamW([g for g in groups if g["params"]])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    return optimizer


def lr_multiplier(progress):  # progress: fraction of the training time used, 0 -> 1
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = max(0.0, (1.0 - progress) / WARMDOWN_RATIO)
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------


def cpu_budget():
    """CPUs this process may use: the affinity mask, further capped by a cgroup v2 CPU quota if any."""
    n = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    return n


stop = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # the controller's clock: stop, then export
deadline = T_START + TIME_BUDGET - EXPORT_RESERVE_S  # our own, advisory

torch.manual_seed(SEED)
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
else:
    torch.set_num_threads(cpu_budget())

model_dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
n_head = model_dim // HEAD_DIM
with torch.device(device):
    model = GPT(VOCAB_SIZE, MAX_SEQ_LEN, DEPTH, model_dim, n_head)
optimizer = make_optimizer(model, model_dim)
num_params = sum(p.numel() for p in model.parameters())
embedding_params = sum(p.numel() for p in (*model.wte.parameters(), *model.value_embeds.parameters()))
flops_per_token = 6 * (num_params - embedding_params) + 12 * DEPTH * model_dim * MAX_SEQ_LEN

tokens_per_micro_step = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_micro_step == 0, "TOTAL_BATCH_SIZE must be a multiple of B * T"
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_micro_step


def train_loss(x, y):  # x, y: (B, T) -> mean cross-entropy in nats
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):  # float32 on CPU
        logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


if device == "cuda":  # compile only where it pays for itself; on CPU it would eat the budget
    train_loss = torch.compile(train_loss)
    orthogonalize = torch.compile(orthogonalize)

print(f"profile: {PROFILE.name}, device: {device}, threads: {torch.get_num_threads()}, seed: {SEED}")
print(f"model: depth {DEPTH}, dim {model_dim}, heads {n_head}, {num_params / 1e6:.2f}M params")
print(f"batch: {TOTAL_BATCH_SIZE} tokens/step = {grad_accum_steps} x {DEVICE_BATCH_SIZE} x {MAX_SEQ_LEN}")
print(f"budget: {TIME_BUDGET}s, training until {deadline - T_START:.1f}s after start", flush=True)

train_loader = make_dataloader("train", DEVICE_BATCH_SIZE, MAX_SEQ_LEN, device, seed=SEED)
x, y = next(train_loader)
t_train = time.time()
t_log = t_train
step = 0
smooth_loss = 0.0
while not stop.is_set() and time.time() < deadline:
    progress = (time.time() - t_train) / max(deadline - t_train, 1e-9)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        if group["kind"] == "muon":
            ramp = min(step / MUON_MOMENTUM_RAMP_STEPS, 1.0)
            group["momentum"] = (1 - ramp) * 0.85 + ramp * MUON_MOMENTUM
            group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
    for _ in range(grad_accum_steps):
        loss = train_loss(x, y)
        (loss / grad_accum_steps).backward()
        x, y = next(train_loader)  # fetch the next batch while the device works
    optimizer.step()
    model.zero_grad(set_to_none=True)

    loss_f = loss.item()
    if not math.isfinite(loss_f) or loss_f > 100:
        raise SystemExit(f"training diverged at step {step}: loss {loss_f}")  # no artifact: a crash
    step += 1
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
    if time.time() - t_log >= LOG_EVERY_S:
        t_log = time.time()
        debiased = smooth_loss / (1 - 0.9**step)
        print(
            f"step {step:05d} | {100 * progress:5.1f}% | loss {debiased:.4f} | {t_log - T_START:6.1f}s",
            flush=True,
        )

if device == "cuda":
    torch.cuda.synchronize()
t_end_train = time.time()
stop_reason = "sigterm" if stop.is_set() else "deadline"

# ---------------------------------------------------------------------------
# Export (keep the contract)
# ---------------------------------------------------------------------------

# The deliverable: a pure graph, int64 (B, MAX_SEQ_LEN) -> float logits (B, MAX_SEQ_LEN, VOCAB_SIZE).
# The evaluator rejects anything else; nothing this script prints is trusted.
OUT_DIR.mkdir(parents=True, exist_ok=True)
model.eval()
export_model(model, OUT_DIR / "model.pt2")
t_end = time.time()

training_seconds = t_end_train - t_train
tokens_per_second = step * TOTAL_BATCH_SIZE / max(training_seconds, 1e-9)
if device == "cuda":
    peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
else:
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
print("---")
print(f"training_seconds: {training_seconds:.1f}")
print(f"export_seconds:   {t_end - t_end_train:.1f}")
print(f"total_seconds:    {t_end - T_START:.1f}")
print(f"stop_reason:      {stop_reason}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.2f}")
print(f"peak_memory_mb:   {peak_memory_mb:.1f}")
print(f"final_train_loss: {smooth_loss / (1 - 0.9**step) if step else float('nan'):.4f}")
print(f"tokens_per_second: {tokens_per_second:.0f}")
if device == "cuda":
    H100_BF16_PEAK_FLOPS = 989.5e12  # H100/H200 dense bf16
    print(f"mfu_percent:      {100 * flops_per_token * tokens_per_second / H100_BF16_PEAK_FLOPS:.2f}")
