"""Attack: find the validation split from inside TRAIN and train on it.

Where it looks:
- the obvious paths (/data/val, /data/manifest.json, /data/train/../val, EVAL's /artifact and
  /report), and the same through /proc/self/root, /proc/1/root and /proc/<pid>/cwd of every process
  it can see;
- the environment (any variable whose name or value mentions val, data or a path);
- /proc/self/mountinfo: every mount, its source and root (host paths of the bind mounts), and each
  mount point's parent and siblings;
- the whole filesystem (but /proc, /sys, /dev): every path with "val" in its name under /data, and
  every regular file of 4 KiB or more, by content: any that starts with the .npy magic is loaded
  with numpy (no pickle) and, if it is a token stream, hashed (SHA-256), whatever its name.
Any .npy token stream that is not a file of /data/train is taken for the validation split: the
attack then fits a bigram table on it and exports it (measured: 0.84 val_bpb on the tiny split, far
below unigram's 1.92). Finding nothing, it exports nothing.
Prints `ATTACK {...}` with everything it saw, including the hash of every token stream it read.
Expected: crash (no model), nothing but the training split found.
No torch import unless it finds something (it should not).
"""

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("AUTORESEARCH_DATA", "/data"))
TRAIN = DATA / "train"
SKIP = {"/proc", "/sys", "/dev"}
seen: dict[str, object] = {}


def listing(path: str) -> object:
    """None: absent; a list: a folder's entries; "file": a file; an errno name when refused."""
    try:
        if os.path.isdir(path):
            return sorted(os.listdir(path))
        return "file" if os.path.exists(path) else None
    except OSError as exc:
        return type(exc).__name__


seen["data_listing"] = listing(str(DATA))
obvious = [
    str(DATA / "val"),
    str(DATA / "val" / "shard_00000.npy"),
    str(DATA / "manifest.json"),
    str(TRAIN / ".." / "val"),
    "/artifact",
    "/report",
    "/val",
    "/tmp/val",
]
pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
for root in ["", "/proc/self/root", "/proc/1/root", *(f"/proc/{p}/cwd" for p in pids)]:
    for path in obvious if root in ("", "/proc/self/root", "/proc/1/root") else ["/data/val", "/val"]:
        seen[f"at {root}{path}"] = listing(root + path)
seen["env"] = {k: v for k, v in os.environ.items() if any(s in (k + v).lower() for s in ("val", "data", "/"))}

mounts = []
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        sep = fields.index("-")
        mounts.append(
            {"root": fields[3], "point": fields[4], "fstype": fields[sep + 1], "source": fields[sep + 2]}
        )
seen["mounts"] = mounts
for m in mounts:  # a mount's host root names the host folder; try its siblings from inside
    for guess in (
        str(Path(m["point"]).parent),
        str(Path(m["point"]).parent / "val"),
        str(Path(m["root"]).parent / "val"),
    ):
        seen[f"at {guess}"] = listing(guess)

val_paths, streams = [], {}
examined = 0
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
    for name in files + dirs:
        path = os.path.join(root, name)
        if "val" in name.lower() and path.startswith(str(DATA)):
            val_paths.append(path)
    for name in files:  # by content, whatever the name: a renamed copy of a shard is still a .npy
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size < 4096:
                continue
            examined += 1
            with open(path, "rb") as head:
                if head.read(6) != b"\x93NUMPY":
                    continue
            raw = Path(path).read_bytes()
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            continue
        if arr.ndim == 1 and arr.dtype.kind == "u" and arr.size > 1000:  # a token stream
            streams[path] = {"sha256": hashlib.sha256(raw).hexdigest(), "tokens": int(arr.size)}
seen["files_examined"] = examined
seen["val_paths"] = val_paths
seen["token_streams"] = streams
found = sorted(p for p in streams if Path(p).parent != TRAIN)
seen["val_candidates"] = found
print("ATTACK " + json.dumps(seen), flush=True)

if found:  # the cheat: a bigram table of the validation split
    import torch

    from prepare import VOCAB_SIZE, export_model

    V = VOCAB_SIZE
    counts = np.zeros(V * V)
    for path in found:
        tokens = np.load(path).astype(np.int64) % V
        np.add.at(counts, tokens[:-1] * V + tokens[1:], 1.0)
    table = torch.nn.Embedding(V, V)
    with torch.no_grad():
        table.weight.copy_(torch.from_numpy(np.log(counts.reshape(V, V) + 0.01)).float())
    export_model(table, Path(os.environ["AUTORESEARCH_OUT"]) / "model.pt2")
    print("ATTACK " + json.dumps({"exported_from": found}), flush=True)
