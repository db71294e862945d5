# Two commands on a fresh machine: `make run` (a research run with the defaults) and `make test`.
# Every target first installs or builds what it needs; each step is idempotent and quick when done.
#
# Python: a virtual environment in $(VENV) made with --system-site-packages, so the packages the host
# already has (torch above all) are reused and nothing is written into the system interpreter
# (PEP 668 hosts refuse that). Override with PY=python3 to use an interpreter as it is.
#
# torch: TORCH_VARIANT=cpu|cuda (default: cuda when `nvidia-smi -L` lists a GPU). It selects the
# torch build installed here (cpu: torch==$(TORCH_VERSION)+cpu, from pip's configured sources or
# else the PyTorch CPU index, never PyPI's CUDA build with its GBs of libraries) and the one baked
# into the trainer image (sandbox/build/ reads the same variable).
#
# Images (sandbox/build/): BASE_IMAGE=... to build on another base (default python:3.11-slim-bookworm,
# else a Debian base bootstrapped here, which needs root); TOOLCHAIN=yes|no|auto for gcc in the
# trainer (torch.compile; auto = with cuda); IMAGES_ARGS=--trainer-only|--no-cache|--refresh-wheelhouse.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
PY ?= $(VENV)/bin/python
PROFILE ?= tiny
RUN_ARGS ?=
PYTEST_ARGS ?=
IMAGES_ARGS ?=
PIP_ARGS ?=
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_VARIANT ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo cuda || echo cpu)
export TORCH_VARIANT TORCH_CPU_INDEX_URL

INSTALL_STAMP := .build/install-$(subst /,_,$(PY)).stamp
ifeq ($(PY),$(VENV)/bin/python)
PY_PREREQ := $(VENV)/bin/python
endif

.PHONY: help install engine engine-userns base wheelhouse images data test test-unit smoke preflight run lint clean ci ray-local ray-stop

help:
	@echo "make run         engine + images + data, then a research run (RUN_ARGS='...' for options)"
	@echo "make test        the whole suite, Docker tests included (starts the engine, builds images and data)"
	@echo "make test-unit   the tests that need no engine"
	@echo "make install     python deps into $(VENV) (TORCH_VARIANT=$(TORCH_VARIANT))"
	@echo "make engine      start the Docker engine with gVisor registered (root; installs it if missing)"
	@echo "make engine-userns  a second engine with userns-remap on its own socket, trainer image loaded"
	@echo "make images      build the trainer and controller images (IMAGES_ARGS=--trainer-only ...)"
	@echo "make data        prepare the data for PROFILE=$(PROFILE)"
	@echo "make smoke       one trial of train.py;  make preflight: the isolation self-test"
	@echo "make lint        ruff + mypy"
	@echo "make ray-local NODES=2  a local Ray cluster: a head with no trial slots, NODES worker nodes with one"
	@echo "                 each (own cpuset), token auth, no dashboard; prints the address.  make ray-stop"

$(VENV)/bin/python:
	$(BOOTSTRAP_PYTHON) -m venv --system-site-packages $(VENV)

$(INSTALL_STAMP): pyproject.toml $(PY_PREREQ)
	@if [ "$(TORCH_VARIANT)" = cpu ] && ! $(PY) -c 'import sys, torch; sys.exit(torch.__version__ != "$(TORCH_VERSION)+cpu")' 2>/dev/null; then \
	  echo "installing the CPU build of torch $(TORCH_VERSION)"; \
	  $(PY) -m pip install $(PIP_ARGS) 'torch==$(TORCH_VERSION)+cpu' \
	    || $(PY) -m pip install $(PIP_ARGS) --extra-index-url $(TORCH_CPU_INDEX_URL) 'torch==$(TORCH_VERSION)+cpu'; \
	fi
	$(PY) -m pip install $(PIP_ARGS) -e '.[dev,ray]'
	@mkdir -p $(@D) && touch $@

install: $(INSTALL_STAMP)

engine:
	@sandbox/scripts/ensure-engine.sh

# A second dockerd with --userns-remap=default (the "userns-remap" hardening tier) next to the default
# engine, never touching it; the trainer image is copied into it. Use it with
# DOCKER_HOST=unix:///var/run/docker-userns.sock (see sandbox/scripts/userns-engine.sh).
engine-userns: images
	@sandbox/scripts/userns-engine.sh

base: install engine
	$(PY) -m sandbox.build base

wheelhouse: install
	$(PY) -m sandbox.build wheelhouse

images: install engine
	$(PY) -m sandbox.build build $(IMAGES_ARGS)

data: install
	$(PY) prepare.py --profile $(PROFILE)

# pytest exits 5 when it collected no tests: said loudly, not a failure.
test: install engine images data
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

test-unit: install
	@set +e; $(PY) -m pytest -m "not docker" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-unit: pytest collected no tests"; exit 0; fi; exit $$rc

smoke: install engine images data
	$(PY) -m harness trial train.py --profile $(PROFILE) --json

preflight: install engine images
	$(PY) -m harness preflight

# No `data` prerequisite: the run prepares (or verifies) the data of the profile it resolves to,
# which make cannot know in advance (gpu where a GPU is visible, else tiny).
run: install engine images
	$(PY) -m harness run $(RUN_ARGS)

lint: install
	$(PY) -m ruff check harness sandbox tests prepare.py
	$(PY) -m mypy harness sandbox

# The wheelhouse and build stamps; images, data and runs/ are kept.
clean:
	rm -rf .build

# A Ray cluster on this host for trying `harness run --ray` (sandbox/cluster/local.py does the work and
# stops it by pid; its state, token and Ray's temp folder live in RAY_ROOT).
NODES ?= 2
RAY_ROOT ?= /tmp/autoresearch-ray-$(shell id -u)
RAY_HOST ?= 127.0.0.1
ray-local: install
	@if [ -f $(RAY_ROOT)/cluster.json ]; then echo "a cluster state is in $(RAY_ROOT): make ray-stop first"; exit 1; fi
	$(PY) -m sandbox.cluster.local start $(RAY_ROOT) $(NODES) --host $(RAY_HOST)

ray-stop:
	@if [ -d $(RAY_ROOT) ]; then $(PY) -m sandbox.cluster.local stop $(RAY_ROOT) && rm -rf $(RAY_ROOT); else echo "no cluster in $(RAY_ROOT)"; fi

ci:
	CI=true .ci/run
