"""The base image the Dockerfiles build FROM: present, pulled, or bootstrapped from Debian packages.

`BASE_IMAGE` (default `python:3.11-slim-bookworm`) if the engine has it, else a base bootstrapped
earlier (`autoresearch-base:bookworm`), else a pull, else `debootstrap --variant=minbase` of Debian
bookworm with python3, then `docker import`: a host that reaches no registry still builds.

Deliberate: an explicitly chosen BASE_IMAGE is never replaced silently; only the engine's API talks to
the engine (debootstrap and tar are host tools).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.utils import parse_repository_tag

from sandbox import constants as C
from sandbox.build.options import (
    BASE_PACKAGES,
    BUILD_TIMEOUT_S,
    DEBIAN_MIRROR,
    DEBIAN_SUITE,
    DEFAULT_BASE_IMAGE,
    LABEL_BASE_PACKAGES,
    REPO_ROOT,
    BaseImageUnavailable,
)
from sandbox.retry import engine_errors

logger = logging.getLogger(__name__)


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
