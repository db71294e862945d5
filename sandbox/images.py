"""Container images: the base image, the hash-locked wheelhouse, the two image builds, their digests.

`python -m sandbox.images build` (what `make images` runs) does, in order:

1. **Base image.** `BASE_IMAGE` (default `python:3.11-slim-bookworm`) if the engine has it, else a
   base bootstrapped earlier (`autoresearch-base:bookworm`), else a pull, else a new bootstrap:
   `debootstrap --variant=minbase` of Debian bookworm with python3, then `docker import`. So a host
   that reaches no registry still builds.
2. **Wheelhouse** (`.build/wheelhouse/`). `pip download` of the pinned requirements for the image's
   interpreter (CPython 3.11, manylinux, this machine's architecture), whatever Python runs this,
   into `pool/`. Then an offline `pip install --dry-run --report` against the pool alone freezes
   what each image will install, with SHA-256 hashes, into `trainer/trainer.lock` and
   `controller/controller.lock`, next to hard links to exactly those wheels. The Dockerfiles install
   them with `--no-index --require-hashes`: the build needs no network and no index trust, and works
   online, behind a proxy or air-gapped alike. A stamp skips all of this when nothing changed.
3. **Images**, through the Docker SDK's build API (logs streamed to this module's logger): the
   trainer, then the controller FROM the trainer's `runtime` stage (everything but the source), by
   ID: it shares the torch layer instead of copying it, and a source edit rebuilds neither image's
   dependencies. Each is identified by its image ID (`sha256:...`, the
   digest of its configuration, which names every layer): manifests record that, never a tag.

Deliberate properties:
- torch comes in two builds, chosen by TORCH_VARIANT (`cpu` | `cuda`; default `cuda` when
  `nvidia-smi -L` lists a GPU). `cpu` pins `torch==X+cpu` (the CPU build: from pip's configured
  sources, else the PyTorch CPU index); `cuda` pins PyPI's default Linux build, which brings its exact
  nvidia-* and triton pins. The lock is checked against the variant: a CPU host never silently gets
  gigabytes of CUDA, and a GPU host never silently gets a CPU-only torch.
- The trainer's requirements are installed with `--no-deps`, so the trainer holds what the file
  lists and no more (no huggingface-hub, no HTTP clients); the image build's import check fails if
  something is missing.
- `TOOLCHAIN` (gcc/g++ and Python headers, which torch.compile needs: triton builds its launcher,
  inductor's CPU backend builds C++) is added to the trainer only with the cuda variant by default:
  it costs about 380 MB and its packages come from a Debian mirror during the build. The compiled
  kernels are loaded from /tmp, so torch.compile also needs `Limits.tmp_exec` (on for the gpu profile).
- Only the engine's API is used to talk to the engine; debootstrap and tar are host tools.
- Engine failures surface as the sandbox's typed errors (`EngineUnavailable`, `ImageMissing`), build
  failures as `ImageBuildError` subclasses, each saying what to do next.
"""

from __future__ import annotations

import argparse
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
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import docker
import docker.errors
from docker.utils import parse_repository_tag
from docker.utils.build import exclude_paths
from pydantic import BaseModel, ConfigDict

from sandbox import constants as C
from sandbox.retry import engine_errors
from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
WHEELHOUSE_REL: Final = ".build/wheelhouse"  # relative to the build context; the Dockerfiles COPY it
TRAINER_REQUIREMENTS: Final = Path(__file__).with_name("requirements-trainer.txt")
CONTROLLER_REQUIREMENTS: Final = Path(__file__).with_name("requirements-controller.txt")
POOL_DIR: Final = "pool"  # every downloaded wheel; not part of the build context
TRAINER_DIR: Final = "trainer"  # Dockerfile.trainer copies this folder: its wheels and trainer.lock
CONTROLLER_DIR: Final = "controller"  # Dockerfile.controller copies this one
TRAINER_LOCK: Final = "trainer.lock"
CONTROLLER_LOCK: Final = "controller.lock"
STAMP_FILE: Final = "stamp.json"
WHEELHOUSE_LAYOUT: Final = 2  # bump when the folder layout changes, so old wheelhouses are rebuilt

TORCH_VERSION: Final = "2.13.0"
TORCH_CPU_INDEX_URL: Final = os.environ.get("TORCH_CPU_INDEX_URL", "https://download.pytorch.org/whl/cpu")
TARGET_PYTHON: Final = (3, 11)  # the images' interpreter (python:3.11 and Debian bookworm)
OLDEST_GLIBC_MINOR: Final = 17  # manylinux2014
IMAGE_GLIBC_MINOR: Final = 36  # bookworm's glibc

DEFAULT_BASE_IMAGE: Final = "python:3.11-slim-bookworm"
DEBIAN_SUITE: Final = "bookworm"
DEBIAN_MIRROR: Final = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES: Final = ("python3", "python3-venv", "ca-certificates")
TOOLCHAIN_PACKAGES: Final = ("gcc", "g++", "libc6-dev")
DEBIAN_PYTHON_HEADERS: Final = "libpython3-dev"  # python:3.11 images ship Python.h; Debian's python3 does not
CONTROLLER_APT_PACKAGES: Final = ("git",)  # the harness keeps its lineage in git
RUNTIME_IMAGE: Final = "autoresearch-trainer:runtime"  # the trainer without source: the controller's parent

ENV_TORCH_VARIANT: Final = "TORCH_VARIANT"
ENV_BASE_IMAGE: Final = "BASE_IMAGE"
LABEL_TORCH_VARIANT: Final = "org.autoresearch.image.torch-variant"
LABEL_LOCK_SHA256: Final = "org.autoresearch.image.lock-sha256"  # of trainer.lock
LABEL_CONTROLLER_LOCK_SHA256: Final = "org.autoresearch.image.controller-lock-sha256"
LABEL_BASE_PACKAGES: Final = "org.autoresearch.base.packages"
# One API call streams a whole build: a quiet torch install must not hit the HTTP timeout.
BUILD_TIMEOUT_S: Final = 3600


class ImageBuildError(SandboxError):
    """An image, its base or its wheelhouse could not be built."""


class WheelhouseError(ImageBuildError):
    """The pinned wheels could not be downloaded or do not form the set the images need."""


class BaseImageUnavailable(ImageBuildError):
    """No base image: not present, not pullable, and not bootstrappable on this host."""


class TorchVariant(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class LockedWheel(BaseModel):
    """One line of a lock file: an exact distribution and the hash pip will insist on."""

    model_config = ConfigDict(frozen=True)

    name: str  # normalized (PEP 503)
    version: str
    sha256: str
    filename: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


class BuildOptions(BaseModel):
    """Everything `build_images` needs; the CLI and the Makefile fill it from flags and environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_image: str = DEFAULT_BASE_IMAGE
    torch_variant: TorchVariant = TorchVariant.CPU
    toolchain: bool | None = None  # None: with the cuda variant only
    trainer_only: bool = False
    no_cache: bool = False
    refresh_wheelhouse: bool = False
    context: Path = REPO_ROOT

    @property
    def wheelhouse(self) -> Path:
        return self.context / WHEELHOUSE_REL

    @property
    def wants_toolchain(self) -> bool:
        return self.torch_variant is TorchVariant.CUDA if self.toolchain is None else self.toolchain


# --------------------------------------------------------------------------- torch variant and pins


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
        sha = hashes.get("sha256") or _file_sha256(wheelhouse / filename)
        meta = item["metadata"]
        wheels.append(
            LockedWheel(name=normalize(meta["name"]), version=meta["version"], sha256=sha, filename=filename)
        )
    return sorted(wheels, key=lambda w: w.name)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _stamp_key(variant: TorchVariant) -> str:
    parts = [
        f"layout {WHEELHOUSE_LAYOUT}",
        TRAINER_REQUIREMENTS.read_text(),
        CONTROLLER_REQUIREMENTS.read_text(),
        torch_requirement(variant),
        " ".join(pip_target_args()),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


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
        f"generated by sandbox.images: torch variant {variant.value}, "
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
    (wheelhouse / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    size_mb = sum(p.stat().st_size for p in pool.glob("*.whl")) / 2**20
    logger.info(
        "wheelhouse ready: %d wheels, %.0f MB, in %.1f s", len(keep), size_mb, time.monotonic() - started
    )
    return trainer_dir / TRAINER_LOCK


def lock_sha256(lock: Path) -> str:
    """The SHA-256 of a lock file (recorded as an image label, so an image names the exact wheel set)."""
    return hashlib.sha256(lock.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- base image


def docker_client(timeout_s: int = BUILD_TIMEOUT_S) -> docker.DockerClient:
    """A client with a timeout long enough for a build, checked with a ping."""
    with engine_errors("connecting to the Docker engine"):
        client = docker.from_env(timeout=timeout_s)
        client.ping()
    return client


def _local_image(client: docker.DockerClient, ref: str) -> Any | None:
    with engine_errors(f"looking up image {ref}"):
        try:
            return client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None


def _pull(client: docker.DockerClient, ref: str) -> bool:
    repo, tag = parse_repository_tag(ref)
    logger.info("pulling %s", ref)
    with engine_errors(f"pulling {ref}"):
        try:
            client.images.pull(repo, tag=tag or "latest")
        except docker.errors.APIError as exc:  # no registry, no such image, no credentials
            logger.warning("could not pull %s: %s", ref, exc.explanation or exc)
            return False
    return True


def ensure_base_image(client: docker.DockerClient, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The image the Dockerfiles build FROM: present, pulled, or bootstrapped from Debian packages.

    A base bootstrapped earlier stands in for the default base without a pull attempt, so warm builds
    on a registry-less host stay offline. An explicitly chosen BASE_IMAGE is never replaced silently:
    if it cannot be found or pulled, that is an error.
    """
    if base_image != C.BASE_IMAGE_LOCAL and _local_image(client, base_image) is not None:
        return base_image
    bootstrapped = _local_image(client, C.BASE_IMAGE_LOCAL)
    if bootstrapped is not None and bootstrapped.labels.get(LABEL_BASE_PACKAGES) == ",".join(BASE_PACKAGES):
        if base_image in (DEFAULT_BASE_IMAGE, C.BASE_IMAGE_LOCAL):
            if base_image == DEFAULT_BASE_IMAGE:
                logger.info("using the bootstrapped %s in place of %s", C.BASE_IMAGE_LOCAL, base_image)
            return C.BASE_IMAGE_LOCAL
    if base_image != C.BASE_IMAGE_LOCAL and _pull(client, base_image):
        return base_image
    if base_image not in (DEFAULT_BASE_IMAGE, C.BASE_IMAGE_LOCAL):
        raise BaseImageUnavailable(
            f"BASE_IMAGE={base_image} is neither present nor pullable; `docker load` it, or unset "
            f"BASE_IMAGE to bootstrap {C.BASE_IMAGE_LOCAL} from Debian packages"
        )
    return bootstrap_base_image(client)


def _unmount_below(root: Path) -> None:
    """Lazily unmount anything debootstrap left mounted under root (proc, sys) before deleting it."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m == str(root) or m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _prune_rootfs(root: Path) -> None:
    """Drop what an image never needs: downloaded .debs, apt lists, manuals, translations."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for path in root.glob(pattern):
            _remove(path)
    for path in root.glob("usr/share/doc/*/*"):
        if path.name != "copyright":  # licences stay
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def bootstrap_base_image(client: docker.DockerClient, *, workdir: Path | None = None) -> str:
    """debootstrap a minimal Debian with python3, then `docker import` it as BASE_IMAGE_LOCAL."""
    if os.geteuid() != 0:
        raise BaseImageUnavailable(
            f"no base image and bootstrapping {C.BASE_IMAGE_LOCAL} needs root: run `sudo make images`, "
            f"or make {DEFAULT_BASE_IMAGE} available (docker pull / docker load)"
        )
    if shutil.which("debootstrap") is None:
        raise BaseImageUnavailable(
            "no base image and debootstrap is missing: `make engine` installs it "
            "(apt-get install debootstrap)"
        )
    parent = workdir or REPO_ROOT / ".build"
    parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=parent))
    rootfs, tarball = tmp / "rootfs", tmp / "rootfs.tar"
    try:
        logger.info(
            "bootstrapping Debian %s (%s) from %s", DEBIAN_SUITE, ",".join(BASE_PACKAGES), DEBIAN_MIRROR
        )
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise BaseImageUnavailable(
                f"debootstrap failed (exit {proc.returncode}); mirror {DEBIAN_MIRROR}:\n{tail}"
            )
        logger.info("debootstrap done in %.1f s; pruning and importing", time.monotonic() - started)
        _prune_rootfs(rootfs)
        tar = subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if tar.returncode != 0:
            raise BaseImageUnavailable(f"packing the bootstrapped root failed: {tar.stderr.strip()[-2000:]}")
        repo, tag = parse_repository_tag(C.BASE_IMAGE_LOCAL)
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL {LABEL_BASE_PACKAGES}={','.join(BASE_PACKAGES)}",
            'CMD ["/bin/bash"]',
        ]
        with engine_errors(f"importing {C.BASE_IMAGE_LOCAL}"):
            client.api.import_image_from_file(str(tarball), repository=repo, tag=tag, changes=changes)
            image_id: str = client.images.get(C.BASE_IMAGE_LOCAL).id
    finally:
        _unmount_below(tmp)
        try:
            shutil.rmtree(tmp)
        except OSError as exc:  # the image is built; a leftover folder under .build/ is only untidy
            logger.warning("could not remove %s: %s", tmp, exc)
    logger.info("bootstrapped %s (%s) in %.1f s", C.BASE_IMAGE_LOCAL, image_id, time.monotonic() - started)
    return C.BASE_IMAGE_LOCAL


# --------------------------------------------------------------------------- builds


def context_files(context: Path = REPO_ROOT, dockerfile: str = "Dockerfile.trainer") -> set[str]:
    """The files docker-py sends as the build context: .dockerignore applied exactly as the SDK does."""
    ignore = context / ".dockerignore"
    patterns = []
    if ignore.exists():
        patterns = [
            ln.strip()
            for ln in ignore.read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")
        ]
    return {
        p for p in exclude_paths(str(context), patterns, dockerfile=dockerfile) if (context / p).is_file()
    }


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    dockerfile: str,
    tag: str,
    buildargs: Mapping[str, str],
    labels: Mapping[str, str],
    target: str | None = None,
    no_cache: bool = False,
) -> str:
    """Build one image (or one stage, `target`) through the engine API, streaming its log; returns its ID."""
    started = time.monotonic()
    base = buildargs.get("BASE_IMAGE") or buildargs.get("TRAINER_IMAGE")
    logger.info("building %s from %s (on %s)", tag, dockerfile, base)
    image_id: str | None = None
    tail: list[str] = []
    with engine_errors(f"building {tag}"):
        stream = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(buildargs),
            labels=dict(labels),
            target=target,
            nocache=no_cache,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                for line in str(chunk["stream"]).splitlines():
                    if line.strip():
                        logger.info("[%s] %s", tag, line.rstrip())
                        tail = [*tail[-39:], line.rstrip()]
            elif "error" in chunk:
                raise ImageBuildError(
                    f"building {tag} from {dockerfile} failed: {chunk['error'].strip()}\n"
                    + "\n".join(tail[-20:])
                )
            elif "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        if image_id is None:
            image_id = client.images.get(tag).id
    logger.info("built %s = %s in %.1f s", tag, image_id, time.monotonic() - started)
    return image_id


def build_images(
    options: BuildOptions | None = None, client: docker.DockerClient | None = None
) -> dict[str, str]:
    """Base, wheelhouse, then the trainer (and the controller unless trainer_only): role -> image ID."""
    opts = options or BuildOptions(torch_variant=detect_torch_variant())
    client = client or docker_client()
    started = time.monotonic()
    base = ensure_base_image(client, opts.base_image)
    build_wheelhouse(opts.wheelhouse, opts.torch_variant, refresh=opts.refresh_wheelhouse)
    apt: tuple[str, ...] = ()
    if opts.wants_toolchain:
        apt = TOOLCHAIN_PACKAGES + ((DEBIAN_PYTHON_HEADERS,) if base == C.BASE_IMAGE_LOCAL else ())
    labels = {
        LABEL_TORCH_VARIANT: opts.torch_variant.value,
        LABEL_LOCK_SHA256: lock_sha256(opts.wheelhouse / TRAINER_DIR / TRAINER_LOCK),
    }
    trainer_args = {
        "BASE_IMAGE": base,
        "APT_PACKAGES": " ".join(apt),
        # torch's C++ headers serve only a compiler: without the toolchain they are dead weight (62 MB).
        "TORCH_HEADERS": "keep" if opts.wants_toolchain else "drop",
        "APP_DIR": C.CONTAINER_APP,
        "APP_UID": str(C.CONTAINER_UID),
        "APP_GID": str(C.CONTAINER_GID),
        "WORKSPACE": C.CONTAINER_WORKDIR,
        "MOUNTPOINTS": " ".join(
            (C.CONTAINER_DATA, C.CONTAINER_OUT, C.CONTAINER_ARTIFACT, C.CONTAINER_REPORT_DIR)
        ),
    }
    common = {"client": client, "context": opts.context, "no_cache": opts.no_cache}
    digests: dict[str, str] = {}
    if not opts.trainer_only:
        # The trainer minus the project source: the controller's parent, unchanged by source edits.
        # Its layers are the trainer build's own, so the trainer build below finds them all cached.
        runtime = build_image(
            **common,
            dockerfile="Dockerfile.trainer",
            tag=RUNTIME_IMAGE,
            target="runtime",
            buildargs=trainer_args,
            labels=labels,
        )
    digests["trainer"] = build_image(
        **common,
        dockerfile="Dockerfile.trainer",
        tag=C.TRAINER_IMAGE,
        target="trainer",
        buildargs=trainer_args,
        labels=labels,
    )
    if not opts.trainer_only:
        controller_lock = lock_sha256(opts.wheelhouse / CONTROLLER_DIR / CONTROLLER_LOCK)
        digests["controller"] = build_image(
            **common,
            dockerfile="Dockerfile.controller",
            tag=C.CONTROLLER_IMAGE,
            buildargs={
                "RUNTIME_IMAGE": runtime,  # by ID: exactly the layers just built
                "APT_PACKAGES": " ".join(CONTROLLER_APT_PACKAGES),
                "APP_DIR": C.CONTAINER_APP,
            },
            labels={**labels, LABEL_CONTROLLER_LOCK_SHA256: controller_lock},
        )
    logger.info("images ready in %.1f s: %s", time.monotonic() - started, digests)
    return digests


def image_digest(name: str = C.TRAINER_IMAGE, client: docker.DockerClient | None = None) -> str:
    """The image ID (`sha256:...`) a manifest records for `name`; raises ImageMissing when not built."""
    client = client or docker_client(timeout_s=60)
    with engine_errors(f"resolving image {name}"):
        image_id: str = client.images.get(name).id
    return image_id


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    variant_help = f"torch build (default: ${ENV_TORCH_VARIANT}, else cuda iff nvidia-smi lists a GPU)"
    build = sub.add_parser("build", help="base image, wheelhouse, trainer and controller images")
    build.add_argument("--trainer-only", action="store_true", help="skip the controller image")
    build.add_argument("--base-image", default=os.environ.get(ENV_BASE_IMAGE) or DEFAULT_BASE_IMAGE)
    build.add_argument("--torch-variant", choices=["auto", "cpu", "cuda"], default=None, help=variant_help)
    build.add_argument(
        "--toolchain",
        choices=["auto", "yes", "no"],
        default=os.environ.get("TOOLCHAIN", "auto"),
        help="C compiler in the trainer for torch.compile (auto: with cuda)",
    )
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    build.add_argument("--refresh-wheelhouse", action="store_true", help="download and re-lock the wheels")
    wheels = sub.add_parser("wheelhouse", help=f"download and lock the wheels into {WHEELHOUSE_REL}")
    wheels.add_argument("--torch-variant", choices=["auto", "cpu", "cuda"], default=None, help=variant_help)
    wheels.add_argument("--refresh", action="store_true")
    base = sub.add_parser("base", help="make sure a base image exists (pull or bootstrap)")
    base.add_argument("--base-image", default=os.environ.get(ENV_BASE_IMAGE) or DEFAULT_BASE_IMAGE)
    digest = sub.add_parser("digest", help="print image IDs")
    digest.add_argument("names", nargs="*", default=[C.TRAINER_IMAGE, C.CONTROLLER_IMAGE])
    return parser


def _variant(flag: str | None) -> TorchVariant:
    env = dict(os.environ)
    if flag is not None:
        env[ENV_TORCH_VARIANT] = flag
    return detect_torch_variant(env)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build":
            choices = {"auto": None, "yes": True, "no": False}
            if args.toolchain not in choices:  # argparse does not check a default taken from $TOOLCHAIN
                raise ValueError(f"TOOLCHAIN={args.toolchain!r}: expected yes, no or auto")
            toolchain = choices[args.toolchain]
            opts = BuildOptions(
                base_image=args.base_image,
                torch_variant=_variant(args.torch_variant),
                toolchain=toolchain,
                trainer_only=args.trainer_only,
                no_cache=args.no_cache,
                refresh_wheelhouse=args.refresh_wheelhouse,
            )
            logger.info("torch variant %s, base %s", opts.torch_variant.value, opts.base_image)
            result: Any = build_images(opts)
        elif args.command == "wheelhouse":
            variant = _variant(args.torch_variant)
            result = {
                "lock": str(build_wheelhouse(REPO_ROOT / WHEELHOUSE_REL, variant, refresh=args.refresh)),
                "variant": variant.value,
            }
        elif args.command == "base":
            result = {"base": ensure_base_image(docker_client(), args.base_image)}
        else:
            client = docker_client(timeout_s=60)
            result = {name: image_digest(name, client) for name in args.names}
    except (SandboxError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
