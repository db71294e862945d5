"""The image build's names and settings: paths, pins, labels, the errors, `BuildOptions`.

Deliberate: one place for every constant the Makefile, the Dockerfiles and the tests check against
(label names, wheelhouse layout, the torch version); no engine access, so importing it is cheap.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict

from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)

SANDBOX_DIR: Final = Path(__file__).resolve().parent.parent
REPO_ROOT: Final = SANDBOX_DIR.parent
WHEELHOUSE_REL: Final = ".build/wheelhouse"  # relative to the build context; the Dockerfiles COPY it
TRAINER_REQUIREMENTS: Final = SANDBOX_DIR / "requirements-trainer.txt"
CONTROLLER_REQUIREMENTS: Final = SANDBOX_DIR / "requirements-controller.txt"
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
