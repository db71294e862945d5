"""Attack: write without bound into the output channel, hoping to fill the host's disk."""

import os
from pathlib import Path

out = Path(os.environ["AUTORESEARCH_OUT"])
block = b"\xff" * (1024 * 1024)
written = 0
with open(out / "junk.bin", "wb") as f:
    while True:
        f.write(block)
        f.flush()
        written += len(block)
        if written % (16 * len(block)) == 0:
            print(f"wrote {written >> 20} MiB", flush=True)
