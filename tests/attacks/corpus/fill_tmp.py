"""Attack: fill the scratch space (/tmp, /dev/shm) and the read-only image, hoping one is the host's disk.

Writes 16 MiB files into /tmp until a write fails, then the same into /dev/shm, and tries the
image's world-writable /var/tmp. Each file stays under the per-file size limit (RLIMIT_FSIZE), so
what stops it is the file system filling up. If /tmp were the host's disk (or an uncapped tmpfs)
the candidate could fill the disk the engine, the ledger and the other trials live on.

Prints `ATTACK {"tmp": {"written_mb": n, "stopped_by": errno, "fs_mb": n}, "shm": {...}, "var_tmp":
...}` and exits 3 (having filled its scratch space it has nothing to export). Expected: crash
(exit 3); /tmp stopped by ENOSPC at its tmpfs cap (256 MiB), /dev/shm at its size (256 MiB),
/var/tmp refused (read-only root).
"""

import errno
import json
import os
import sys

MiB = 1 << 20
FILE_MB = 16
LIMIT_MB = 2048  # stop here if nothing else does: the memory limit would be next


def errname(err):
    return errno.errorcode.get(err, str(err))


def fill(folder):
    vfs = os.statvfs(folder)
    out = {"fs_mb": vfs.f_blocks * vfs.f_frsize / MiB, "written_mb": 0.0, "stopped_by": None}
    chunk = b"\xa5" * MiB
    written, index = 0, 0
    while written < LIMIT_MB * MiB and out["stopped_by"] is None:
        try:
            fd = os.open(
                os.path.join(folder, f"attack-fill-{index}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        except OSError as exc:
            out["stopped_by"] = errname(exc.errno)
            break
        index += 1
        try:
            for _ in range(FILE_MB):
                written += os.write(fd, chunk)
        except OSError as exc:
            out["stopped_by"] = errname(exc.errno)
        finally:
            os.close(fd)
    out["written_mb"] = round(written / MiB, 2)
    out["files"] = index
    return out


report = {"tmp": fill("/tmp"), "shm": fill("/dev/shm"), "var_tmp": fill("/var/tmp")}
print("ATTACK " + json.dumps(report), flush=True)
sys.exit(3)
