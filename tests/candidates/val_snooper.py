"""Attack: find the validation split during training (to train on it, or to memorise it).

Looks at /data, tries the obvious val paths, then walks the whole filesystem (but /proc, /sys, /dev)
and hashes every regular file whose size equals one of SIZES (the sizes of the real val and train
shards, filled in by the test), plus every path containing "val". Prints one line `SEEN <json>`.
"""

import hashlib
import json
import os

SIZES: set[int] = set()  # filled in by the test
SKIP = {"/proc", "/sys", "/dev"}

seen: dict[str, object] = {"data_listing": sorted(os.listdir("/data")) if os.path.isdir("/data") else None}
for path in ("/data/val", "/data/val/shard_00000.npy", "/data/manifest.json", "/artifact", "/report"):
    # None: absent; a list: a folder's entries (the image may ship empty mount points); True: a file.
    seen[f"at {path}"] = (
        (sorted(os.listdir(path)) if os.path.isdir(path) else True) if os.path.exists(path) else None
    )
hashes: dict[str, str] = {}
val_paths: list[str] = []
for root, dirs, files in os.walk("/", onerror=lambda e: None):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
    for name in files + dirs:
        path = os.path.join(root, name)
        if "val" in name.lower() and path.startswith("/data"):
            val_paths.append(path)
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.path.islink(path) or os.path.getsize(path) not in SIZES:
                continue
            with open(path, "rb") as f:
                hashes[path] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            continue
seen["hashes"] = hashes
seen["val_paths"] = val_paths
print("SEEN " + json.dumps(seen), flush=True)
