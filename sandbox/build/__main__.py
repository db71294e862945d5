"""`python -m sandbox.build`: what `make base`, `make wheelhouse` and `make images` run.

Subcommands: `build` (base, wheelhouse, trainer and controller images), `wheelhouse`, `base`,
`digest`. Prints one JSON document; build failures exit with `ExitCode.ERROR` and say what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from sandbox import constants as C
from sandbox.build.base import docker_client, ensure_base_image
from sandbox.build.images import build_images, image_digest
from sandbox.build.options import (
    DEFAULT_BASE_IMAGE,
    ENV_BASE_IMAGE,
    ENV_TORCH_VARIANT,
    REPO_ROOT,
    WHEELHOUSE_REL,
    BuildOptions,
    TorchVariant,
)
from sandbox.build.wheelhouse import build_wheelhouse, detect_torch_variant
from sandbox.constants import ExitCode
from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.build", description="Build the base image, the wheelhouse and the images."
    )
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
        return ExitCode.ERROR
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
