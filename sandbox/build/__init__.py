"""Container images: the base image, the hash-locked wheelhouse, the two image builds, their digests.

`python -m sandbox.build build` (what `make images` runs) does, in order:

1. **Base image**: present, else pulled, else debootstrapped (a host that reaches no registry builds).
2. **Wheelhouse** (`.build/wheelhouse/`): the pinned wheels for the image's interpreter, frozen with
   SHA-256 hashes into one lock per image; the Dockerfiles install with `--no-index --require-hashes`.
3. **Images**: the trainer, then the controller FROM the trainer's `runtime` stage (one torch layer),
   each identified by its image ID, never a tag.
(Each step in detail: docs/ARCHITECTURE.md, "Measurements and history".)

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
  inductor's CPU backend builds C++) is added to the trainer only with the cuda variant by default
  (its size: docs/ARCHITECTURE.md; its packages come from a Debian mirror during the build). The compiled
  kernels are loaded from /tmp, so torch.compile also needs `Limits.tmp_exec` (on for the gpu profile).
- Only the engine's API is used to talk to the engine; debootstrap and tar are host tools.
- Engine failures surface as the sandbox's typed errors (`EngineUnavailable`, `ImageMissing`), build
  failures as `ImageBuildError` subclasses, each saying what to do next.

Modules: `options` (names, pins, errors, `BuildOptions`), `wheelhouse` (torch variant, pins, the
hash-locked wheelhouse), `base` (the base image: present, pulled or debootstrapped), `images` (the
build context whitelist, the two builds, digests), `__main__` (the CLI `make images` runs).
"""
