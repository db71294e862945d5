"""Attack: write an artifact bigger than the output channel's cap, to fill the host's disk or memory.

First a sparse file: model.pt2 truncated up to 1 TiB (costs nothing on most filesystems), with
SIGXFSZ ignored so that the file-size limit shows up as an error instead of a kill. Then real
bytes: it writes 1 MiB blocks into model.pt2 until a write fails, and records how far it got.
If the channel had no cap, this would write until the host's disk or memory ran out.
Prints `ATTACK {"truncate": "ok" | errno, "written": bytes, "error": errno}`.
Expected: output_limit; nothing written beyond the cap (128 MiB on the tiny profile).
No torch import.
"""

import errno
import json
import os
import signal
from pathlib import Path

OUT = Path(os.environ["AUTORESEARCH_OUT"])
BLOCK = b"\xa5" * (1 << 20)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


seen: dict[str, object] = {}
with open(OUT / "model.pt2", "wb", buffering=0) as f:
    try:
        f.truncate(1 << 40)
        seen["truncate"] = "ok"
    except OSError as exc:
        seen["truncate"] = errname(exc)
    f.truncate(0)
    written = 0
    try:
        while written < 1 << 40:
            written += f.write(BLOCK) or 0
    except OSError as exc:
        seen["error"] = errname(exc)
    seen["written"] = written
print("ATTACK " + json.dumps(seen), flush=True)
