"""The hash-locked wheelhouse: the torch variant, exact pins, `pip download`, and the two lock files.

`pip download` fills `pool/` for the images' interpreter (not the one running this); an offline
`pip install --dry-run --report` against the pool alone freezes what each image installs, with
hashes, next to hard links to exactly those wheels. A stamp skips everything when nothing changed.

Deliberate: the lock is checked against the variant, so a CPU host never silently gets gigabytes of
CUDA and a GPU host never a CPU-only torch; pins looser than `name==version` are errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.build.options import (
    CONTROLLER_DIR,
    CONTROLLER_LOCK,
    CONTROLLER_REQUIREMENTS,
    ENV_TORCH_VARIANT,
    IMAGE_GLIBC_MINOR,
    OLDEST_GLIBC_MINOR,
    POOL_DIR,
    STAMP_FILE,
    TARGET_PYTHON,
    TORCH_CPU_INDEX_URL,
    TORCH_VERSION,
    TRAINER_DIR,
    TRAINER_LOCK,
    TRAINER_REQUIREMENTS,
    WHEELHOUSE_LAYOUT,
    LockedWheel,
    TorchVariant,
    WheelhouseError,
)
from sandbox.incontainer.fileio import atomic_write, sha256_file

logger = logging.getLogger(__name__)


def nvidia_smi_lists_a_gpu() -> bool:
    """True when `nvidia-smi -L` runs and names at least one GPU (the driver's view, not a guess)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("nvidia-smi did not answer (%s): choosing the cpu torch", exc)
        return False
    return out.returncode == 0 and any(line.startswith("GPU ") for line in out.stdout.splitlines())


def detect_torch_variant(
    env: Mapping[str, str] | None = None, has_gpu: Callable[[], bool] = nvidia_smi_lists_a_gpu
) -> TorchVariant:
    """$TORCH_VARIANT when set (cpu|cuda; empty or "auto" means detect), else cuda iff a GPU is visible."""
    value = (os.environ if env is None else env).get(ENV_TORCH_VARIANT, "").strip().lower()
    if value in ("", "auto"):
        return TorchVariant.CUDA if has_gpu() else TorchVariant.CPU
    try:
        return TorchVariant(value)
    except ValueError:
        raise ValueError(f"{ENV_TORCH_VARIANT}={value!r}: expected cpu, cuda or auto") from None


def torch_requirement(variant: TorchVariant) -> str:
    """The pip requirement for the variant. cuda excludes the CPU build that local find-links may offer."""
    if variant is TorchVariant.CPU:
        return f"torch=={TORCH_VERSION}+cpu"
    return f"torch=={TORCH_VERSION},!={TORCH_VERSION}+cpu"


def normalize(name: str) -> str:
    """PEP 503 project-name normalization."""
    out = name.strip().lower()
    for ch in "_.":
        out = out.replace(ch, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file; anything looser is an error, not a wish."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip() or any(ch in version for ch in "<>=!~,;[ *"):
            raise WheelhouseError(f"{path}:{number}: {line!r} is not an exact `name==version` pin")
        key = normalize(name)
        if key in pins:
            raise WheelhouseError(f"{path}:{number}: {name} is pinned twice")
        pins[key] = version.strip()
    return pins


def pip_target_args(machine: str | None = None) -> list[str]:
    """pip options selecting wheels for the images' interpreter, not the one running this code."""
    arch = machine or platform.machine()
    major, minor = TARGET_PYTHON
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}"]
    for abi in (f"cp{major}{minor}", "abi3", "none"):
        args += ["--abi", abi]
    for glibc in range(IMAGE_GLIBC_MINOR, OLDEST_GLIBC_MINOR - 1, -1):
        args += ["--platform", f"manylinux_2_{glibc}_{arch}"]
    args += ["--platform", f"manylinux2014_{arch}", "--platform", f"linux_{arch}"]
    return args


# --------------------------------------------------------------------------- wheelhouse


def _pip(args: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    logger.debug("running %s", " ".join(cmd))
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise WheelhouseError(f"{what} failed (pip exit {proc.returncode}):\n{tail}")


def _resolve_offline(wheelhouse: Path, args: Sequence[str], what: str) -> list[LockedWheel]:
    """What pip would install from the wheelhouse alone (no index): exactly what the image build will do."""
    with tempfile.TemporaryDirectory(prefix="resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--no-index",
                "--target",
                str(Path(tmp) / "target"),
                "--report",
                str(report),
                *pip_target_args(),
                *args,
            ],
            f"resolving {what} from {wheelhouse} (is a wheel missing? run with --refresh-wheelhouse)",
            # Through the environment, not --find-links: that would ADD to find-links from pip's
            # configuration, and a wheel found there but absent from the pool would break the build.
            env={"PIP_FIND_LINKS": str(wheelhouse)},
        )
        return wheels_from_report(json.loads(report.read_text()), wheelhouse)


def wheels_from_report(report: Mapping[str, Any], wheelhouse: Path) -> list[LockedWheel]:
    """The distributions in a `pip install --report` document, with the hash of each wheel file."""
    wheels = []
    for item in report.get("install", []):
        url: str = item["download_info"]["url"]
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        sha = hashes.get("sha256") or sha256_file(wheelhouse / filename)
        meta = item["metadata"]
        wheels.append(
            LockedWheel(name=normalize(meta["name"]), version=meta["version"], sha256=sha, filename=filename)
        )
    return sorted(wheels, key=lambda w: w.name)


def merge_locks(*groups: Iterable[LockedWheel]) -> list[LockedWheel]:
    """Union by name; the same name at two versions means the pins disagree."""
    merged: dict[str, LockedWheel] = {}
    for wheel in (w for group in groups for w in group):
        seen = merged.setdefault(wheel.name, wheel)
        if seen.version != wheel.version:
            raise WheelhouseError(f"{wheel.name} resolved to both {seen.version} and {wheel.version}")
    return sorted(merged.values(), key=lambda w: w.name)


def check_variant(lock: Sequence[LockedWheel], variant: TorchVariant) -> None:
    """The trainer lock's torch is the build the variant asks for (and cuda brings its CUDA libraries)."""
    torch = next((w for w in lock if w.name == "torch"), None)
    if torch is None:
        raise WheelhouseError("the trainer lock has no torch")
    is_cpu_build = torch.version.endswith("+cpu")
    if variant is TorchVariant.CPU and not is_cpu_build:
        raise WheelhouseError(f"TORCH_VARIANT=cpu but the wheelhouse resolved torch {torch.version}")
    if variant is TorchVariant.CUDA and (is_cpu_build or not any(w.name.startswith("nvidia-") for w in lock)):
        raise WheelhouseError(
            f"TORCH_VARIANT=cuda but torch {torch.version} came without CUDA libraries; "
            "use TORCH_VARIANT=cpu on a host without NVIDIA GPUs"
        )


def write_lock(path: Path, wheels: Sequence[LockedWheel], header: str) -> str:
    """Write a pip requirements file with hashes; returns its SHA-256 (recorded as an image label)."""
    text = "".join(f"# {line}\n" for line in header.splitlines()) + "".join(w.line() + "\n" for w in wheels)
    atomic_write(path, text)
    return sha256_file(path)


def _stamp_key(variant: TorchVariant) -> str:
    parts = [
        f"layout {WHEELHOUSE_LAYOUT}",
        TRAINER_REQUIREMENTS.read_text(),
        CONTROLLER_REQUIREMENTS.read_text(),
        torch_requirement(variant),
        " ".join(pip_target_args()),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()  # of text, not of a file


def _wheelhouse_is_current(wheelhouse: Path, variant: TorchVariant) -> bool:
    try:
        stamp = json.loads((wheelhouse / STAMP_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if stamp.get("key") != _stamp_key(variant):
        return False
    return all((wheelhouse / rel).is_file() for rel in stamp.get("files", []))


def _publish(
    pool: Path, folder: Path, lock_name: str, wheels: Sequence[LockedWheel], header: str
) -> list[str]:
    """Make `folder` hold exactly the locked wheels (hard links into the pool) and their lock."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {w.filename for w in wheels} | {lock_name}
    for path in folder.iterdir():
        if path.name not in wanted:
            path.unlink()
    for wheel in wheels:
        src, dst = pool / wheel.filename, folder / wheel.filename
        if dst.exists() and dst.stat().st_ino == src.stat().st_ino:
            continue
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or no hard links there
            shutil.copy2(src, dst)
    write_lock(folder / lock_name, wheels, header)
    return [f"{folder.name}/{name}" for name in sorted(wanted)]


def build_wheelhouse(wheelhouse: Path, variant: TorchVariant, *, refresh: bool = False) -> Path:
    """Download and hash-lock every wheel both images install; returns the trainer lock's path.

    Layout: `pool/` holds every downloaded wheel (never sent to the engine); `trainer/` and
    `controller/` hold exactly what each image installs, as hard links, with its lock. Each image
    copies only its own folder, so a change to the controller's pins never rebuilds the trainer's
    torch layer. Network: the first run (or a changed pin) downloads through pip's configured index,
    find-links and proxy; later runs are no-ops. Needs pip >= 22.2 (for `--report`).
    """
    pool, trainer_dir = wheelhouse / POOL_DIR, wheelhouse / TRAINER_DIR
    if not refresh and _wheelhouse_is_current(wheelhouse, variant):
        logger.info("wheelhouse %s is current (torch %s); nothing to download", wheelhouse, variant.value)
        return trainer_dir / TRAINER_LOCK
    started = time.monotonic()
    pool.mkdir(parents=True, exist_ok=True)
    target, torch_req = pip_target_args(), torch_requirement(variant)
    download = ["download", "--dest", str(pool), "--progress-bar", "off", *target]
    trainer_reqs, constraints = ["-r", str(TRAINER_REQUIREMENTS)], ["-c", str(TRAINER_REQUIREMENTS)]
    logger.info("downloading the trainer's pinned wheels into %s", pool)
    _pip([*download, "--no-deps", *trainer_reqs], "downloading the trainer's wheels")
    logger.info("downloading %s and its dependencies", torch_req)
    try:
        _pip([*download, *constraints, torch_req], f"downloading {torch_req}")
    except WheelhouseError:
        if variant is not TorchVariant.CPU:
            raise
        logger.info("not in pip's configured sources; trying the PyTorch CPU index %s", TORCH_CPU_INDEX_URL)
        _pip(
            [*download, *constraints, "--extra-index-url", TORCH_CPU_INDEX_URL, torch_req],
            f"downloading {torch_req} from {TORCH_CPU_INDEX_URL}",
        )
    logger.info("downloading the controller's wheels")
    _pip([*download, *constraints, "-r", str(CONTROLLER_REQUIREMENTS)], "downloading the controller's wheels")

    trainer = merge_locks(
        _resolve_offline(pool, [*constraints, torch_req], "torch"),
        _resolve_offline(pool, ["--no-deps", *trainer_reqs], "the trainer's pins"),
    )
    check_variant(trainer, variant)
    trainer_names = {w.name: w.version for w in trainer}
    controller_all = _resolve_offline(
        pool, [*constraints, "-r", str(CONTROLLER_REQUIREMENTS)], "the controller"
    )
    for wheel in controller_all:
        if wheel.name in trainer_names and trainer_names[wheel.name] != wheel.version:
            raise WheelhouseError(
                f"the controller needs {wheel.name} {wheel.version}, the trainer pins "
                f"{trainer_names[wheel.name]}: align the requirement files"
            )
    controller = [w for w in controller_all if w.name not in trainer_names]

    header = (
        f"generated by sandbox.build: torch variant {variant.value}, "
        f"python {'.'.join(map(str, TARGET_PYTHON))}, {platform.machine()}"
    )
    files = _publish(pool, trainer_dir, TRAINER_LOCK, trainer, f"{header}\nthe trainer image (--no-deps)")
    files += _publish(
        pool,
        wheelhouse / CONTROLLER_DIR,
        CONTROLLER_LOCK,
        controller,
        f"{header}\nthe controller image, on top of the trainer runtime (--no-deps)",
    )
    keep = {w.filename for w in (*trainer, *controller)}
    for stale in sorted(p for p in pool.glob("*.whl") if p.name not in keep):
        logger.info("removing %s from the wheelhouse (no longer pinned)", stale.name)
        stale.unlink()
    # Wheels and locks at the top level are the flat layout of earlier builds.
    for legacy in [*wheelhouse.glob("*.whl"), *wheelhouse.glob("*.lock")]:
        legacy.unlink()
    stamp = {"key": _stamp_key(variant), "variant": variant.value, "files": files}
    atomic_write(wheelhouse / STAMP_FILE, json.dumps(stamp, indent=1) + "\n")
    size_mb = sum(p.stat().st_size for p in pool.glob("*.whl")) / 2**20
    logger.info(
        "wheelhouse ready: %d wheels, %.0f MB, in %.1f s", len(keep), size_mb, time.monotonic() - started
    )
    return trainer_dir / TRAINER_LOCK
