"""Attack: rewrite what the audit trail and the evaluator rely on: this very train.py, prepare.py and
the sandbox's sources in the image, and the training data and tokenizer on the data mount.

/workspace/train.py is a bind mount of the controller's copy of the candidate: if it were writable,
the candidate could replace the recorded train.py (the audit, the lineage commit) after the fact.
prepare.py and sandbox/**/*.py define the metric and the checks; the data mount is the host's prepared
data, shared by every trial and by the evaluator. For each target it tries, and records the outcome
(`ok` or the errno name) of: append, truncate-open, create a file next to it, chmod, rename over it,
unlink it, and a hard link next to it. Then it reads its own file back to see whether it changed.
Prints `ATTACK {"attempts": {...}, "own_sha256_before": ..., "own_sha256_after": ...}`.
If any of it worked, the audit copy or the host's data or the evaluator would carry the candidate's
bytes. Expected: crash (it writes no model), every attempt refused, host files unchanged.
"""

import errno
import hashlib
import json
import os
from pathlib import Path

ME = Path("/workspace/train.py")
APP = Path("/opt/autoresearch")
DATA = Path(os.environ.get("AUTORESEARCH_DATA", "/data"))
MARK = "\n# overwritten by the candidate\n"


def sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def attempt(action) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def append(path: Path):
    def act():
        with open(path, "a") as f:
            f.write(MARK)

    return act


def truncate(path: Path):
    def act():
        with open(path, "r+b") as f:
            f.truncate(0)

    return act


def create(path: Path):
    def act():
        with open(path, "x") as f:
            f.write(MARK)

    return act


targets = [ME, APP / "prepare.py", *sorted((APP / "sandbox").rglob("*.py"))]
targets += sorted(p for sub in ("train", "tokenizer") for p in (DATA / sub).glob("*") if p.is_file())
before = sha256(ME)
attempts: dict[str, str] = {}
for target in targets:
    attempts[f"append {target}"] = attempt(append(target))
    attempts[f"truncate {target}"] = attempt(truncate(target))
    attempts[f"chmod {target}"] = attempt(lambda t=target: os.chmod(t, 0o666))
    attempts[f"rename-over {target}"] = attempt(
        lambda t=target: os.rename(ME, t) if t != ME else os.rename(t, t.with_name("x.py"))
    )
    attempts[f"unlink {target}"] = attempt(lambda t=target: os.unlink(t))
for folder in sorted({t.parent for t in targets}):
    attempts[f"create {folder / 'planted.py'}"] = attempt(create(folder / "planted.py"))
    attempts[f"link {folder / 'linked'}"] = attempt(lambda f=folder: os.link(ME, f / "linked"))
    attempts[f"chmod {folder}"] = attempt(lambda f=folder: os.chmod(f, 0o777))
seen = {
    "attempts": attempts,
    "own_sha256_before": before,
    "own_sha256_after": sha256(ME),
    "targets": len(targets),
}
print("ATTACK " + json.dumps(seen), flush=True)
