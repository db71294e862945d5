"""Attack: find something to cheat with besides the training split: a reference checkpoint, a copy
of the data with validation text in it, or statistics of the validation split.

Where it looks:
- the whole filesystem (but /proc, /sys, /dev) for checkpoints and archives: files ending in .pt,
  .pth, .pt2, .bin, .ckpt, .safetensors, .onnx, .gguf, .h5, .npz, .parquet, .arrow, .jsonl, .tar,
  .zst, .gz of 1 MiB or more;
- the data mount: every entry of /data and of its folders besides train/ and tokenizer/, and every
  hidden file there;
- the image's application folder (/opt/autoresearch) and site-packages for data files (anything
  not .py/.pyc/.so/.pyi/.typed/metadata) of 1 MiB or more;
- the tokenizer files for keys other than a tokenizer's own (counts, frequencies, val statistics,
  unigram_bpb) and the tokenizer's vocabulary for whole validation sentences (tokens longer than
  64 bytes);
- the environment for anything pointing at weights or data.
Anything found is something a candidate could train on, distil from or look up answers in. This
attack only reports it (using a checkpoint needs its architecture, which no generic attack knows);
the test fails on any find. It never exports a model.
Prints `ATTACK {"checkpoints": [...], "data_mount_extra": [...], "app_data": [...],
"tokenizer_extra_keys": [...], "long_tokens": n, "env": {...}, "files_walked": n}`.
Expected: crash (no model), every list empty.
No torch import.
"""

import json
import os
import sys
from pathlib import Path

DATA = Path(os.environ.get("AUTORESEARCH_DATA", "/data"))
SKIP = {"/proc", "/sys", "/dev"}
MiB = 1 << 20
CHECKPOINT_EXT = (
    ".pt",
    ".pth",
    ".pt2",
    ".bin",
    ".ckpt",
    ".safetensors",
    ".onnx",
    ".gguf",
    ".h5",
    ".npz",
    ".parquet",
    ".arrow",
    ".jsonl",
    ".tar",
    ".zst",
    ".gz",
)
CODE_EXT = (".py", ".pyc", ".pyi", ".so", ".typed", ".txt", ".md", ".h", ".hpp", ".cuh", ".json", ".pxd")
SPLIT_DIRS = {"train", "tokenizer"}


def size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return -1


def is_program(path: str) -> bool:
    """Executables and shared libraries (ELF) are code, not data."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return True


checkpoints, app_data = [], []
walked = 0
site = next((p for p in map(Path, sys.path) if p.name == "site-packages"), Path("/opt/venv"))
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
    walked += len(files)
    for name in files:
        path = os.path.join(root, name)
        if path.startswith(str(DATA / "train") + "/"):
            continue  # the training split itself is fair game
        if name.lower().endswith(CHECKPOINT_EXT) and size(path) >= MiB:
            checkpoints.append(path)
        elif path.startswith(("/opt/autoresearch/", str(site) + "/")) and not name.endswith(CODE_EXT):
            if size(path) >= MiB and ".dist-info/" not in path and not is_program(path):
                app_data.append(path)

data_mount_extra = []
for entry in sorted(os.listdir(DATA)) if DATA.is_dir() else []:
    if entry not in SPLIT_DIRS:
        data_mount_extra.append(str(DATA / entry))
for sub in SPLIT_DIRS:
    for entry in sorted(os.listdir(DATA / sub)) if (DATA / sub).is_dir() else []:
        if entry.startswith("."):
            data_mount_extra.append(str(DATA / sub / entry))

tokenizer_extra, long_tokens = [], 0
tok_dir = DATA / "tokenizer"
for tok_file in sorted(tok_dir.glob("*.json")) if tok_dir.is_dir() else []:
    doc = json.loads(tok_file.read_text())
    if isinstance(doc, dict):
        known = set(
            "version truncation padding added_tokens normalizer pre_tokenizer model post_processor decoder".split()
        )
        tokenizer_extra += [f"{tok_file.name}:{k}" for k in doc if k not in known]
        vocab = (doc.get("model") or {}).get("vocab") or {}
        long_tokens += sum(1 for token in vocab if len(token) > 64)
        model_known = (
            "type dropout unk_token continuing_subword_prefix end_of_word_suffix fuse_unk byte_fallback"
        )
        model_keys = set(doc.get("model") or {}) - set(f"{model_known} ignore_merges vocab merges".split())
        tokenizer_extra += [f"{tok_file.name}:model.{k}" for k in sorted(model_keys)]

env = {
    k: v
    for k, v in os.environ.items()
    if any(s in (k + v).lower() for s in ("weight", "ckpt", "model", "hf_", "cache"))
}
seen = {
    "checkpoints": checkpoints,
    "data_mount_extra": data_mount_extra,
    "app_data": app_data,
    "tokenizer_extra_keys": tokenizer_extra,
    "long_tokens": long_tokens,
    "env": env,
    "files_walked": walked,
}
print("ATTACK " + json.dumps(seen), flush=True)
# Anything found would be loaded here (torch.load(weights_only=True) of a checkpoint, a corpus
# counted into a bigram table) and exported. Nothing found: no model.
