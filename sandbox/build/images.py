"""The two image builds through the engine's build API, the build-context whitelist, image digests.

The trainer first, then the controller FROM the trainer's `runtime` stage (everything but the source)
by ID: it shares the torch layer instead of copying it, and a source edit rebuilds neither image's
dependencies. Images are identified by ID (`sha256:...`, which names every layer), never by tag.

Deliberate: the build context is what .dockerignore lets through, read exactly as docker-py applies
it (`context_files`), so a test can hold it to a whitelist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import docker
from docker.utils.build import exclude_paths

from sandbox import constants as C
from sandbox.build.base import docker_client, ensure_base_image
from sandbox.build.options import (
    CONTROLLER_APT_PACKAGES,
    CONTROLLER_DIR,
    CONTROLLER_LOCK,
    DEBIAN_PYTHON_HEADERS,
    LABEL_CONTROLLER_LOCK_SHA256,
    LABEL_LOCK_SHA256,
    LABEL_TORCH_VARIANT,
    REPO_ROOT,
    RUNTIME_IMAGE,
    TOOLCHAIN_PACKAGES,
    TRAINER_DIR,
    TRAINER_LOCK,
    BuildOptions,
    ImageBuildError,
)
from sandbox.build.wheelhouse import build_wheelhouse, detect_torch_variant
from sandbox.incontainer.fileio import sha256_file
from sandbox.retry import engine_errors

logger = logging.getLogger(__name__)


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
        LABEL_LOCK_SHA256: sha256_file(opts.wheelhouse / TRAINER_DIR / TRAINER_LOCK),
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
        controller_lock = sha256_file(opts.wheelhouse / CONTROLLER_DIR / CONTROLLER_LOCK)
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
