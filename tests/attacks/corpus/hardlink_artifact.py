"""Attack: make model.pt2 a hard link to a file outside the output channel, or give it a second name.

A hard link has no "target" to refuse: it IS the other file. Linked to /data/train's shard, the
prepared data, prepare.py or the candidate's own train.py, the evaluator would read (and anything
that wrote the artifact would write) a file of the host's. It tries each of those, then falls back
to a second name for its own model.pt2 inside the channel (a file with two names can be changed
through the one the checks did not look at).
Prints `ATTACK {"links": {source: "ok" | errno}, "fallback": ...}`.
Expected: every cross-mount link refused (EXDEV/EPERM/EACCES/EROFS); the artifact rejected
(`artifact:extra_files` or `artifact:hard_link`).
No torch import.
"""

import errno
import json
import os
from pathlib import Path

OUT = Path(os.environ["AUTORESEARCH_OUT"])
DATA = Path(os.environ.get("AUTORESEARCH_DATA", "/data"))
MODEL = OUT / "model.pt2"
SOURCES = [
    DATA / "train" / "shard_00000.npy",
    DATA / "tokenizer" / "tokenizer.json",
    Path("/opt/autoresearch/prepare.py"),
    Path("/workspace/train.py"),
    Path("/etc/passwd"),
]


def attempt(action) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


links = {}
for source in SOURCES:
    links[str(source)] = attempt(lambda s=source: os.link(s, MODEL))
    if MODEL.exists():
        break  # one of them worked: that is the artifact
fallback = None
if not MODEL.exists():
    MODEL.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip; what matters is the second name
    fallback = attempt(lambda: os.link(MODEL, OUT / ".model.pt2"))
print(
    "ATTACK " + json.dumps({"links": links, "fallback": fallback, "nlink": os.stat(MODEL).st_nlink}),
    flush=True,
)
