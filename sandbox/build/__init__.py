"""Container images: the base image, the hash-locked wheelhouse, the two image builds, their digests.

`python -m sandbox.build build` (what `make images` runs) does, in order:

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

Modules: `options` (names, pins, errors, `BuildOptions`), `wheelhouse` (torch variant, pins, the
hash-locked wheelhouse), `base` (the base image: present, pulled or debootstrapped), `images` (the
build context whitelist, the two builds, digests), `__main__` (the CLI `make images` runs).
"""
