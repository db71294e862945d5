"""The names that cross the container boundary: what the controller and the in-container code must agree on.

Container paths, the environment train.py reads, the jail's command line, the evaluator's module and
exit code, the artifact and report file names, and the trial `Status` values the report carries.
`sandbox.constants` re-exports every one of them, so each is defined once. Standard library only: the
trainer image and the controller both import it, and it loads no torch.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# Environment variables the controller sets inside containers (and that train.py reads).
ENV_OUT: Final = "AUTORESEARCH_OUT"  # folder where train.py writes model.pt2
ENV_SEED: Final = "AUTORESEARCH_SEED"  # seed the controller hands to the candidate

# Paths inside the containers.
CONTAINER_WORKDIR: Final = "/workspace"
CONTAINER_CANDIDATE: Final = "/workspace/train.py"
CONTAINER_DATA: Final = "/data"
CONTAINER_OUT: Final = "/out"  # TRAIN: writable, size-capped
CONTAINER_ARTIFACT: Final = "/artifact"  # EVAL: the TRAIN output, read-only
CONTAINER_REPORT_DIR: Final = "/report"  # EVAL: small writable result channel
CONTAINER_APP: Final = "/opt/autoresearch"  # prepare.py and sandbox/incontainer/ in the trainer image
CONTAINER_UID: Final = 65532
CONTAINER_GID: Final = 65532

# Every container command runs through the jail: a seccomp filter of the sandbox's own, then exec.
JAIL: Final = ("python", "-I", "-S", f"{CONTAINER_APP}/sandbox/incontainer/jail.py")
# The trusted evaluator, started as `python -m EVALUATOR_MODULE` in EVAL (and by the local backend).
EVALUATOR_MODULE: Final = "sandbox.incontainer.evaluate"

# The artifact contract.
ARTIFACT_FILE: Final = "model.pt2"
REPORT_FILE: Final = "report.json"
EVALUATOR_ERROR_EXIT: Final = 2  # the evaluator could not run (its own failure, no report written)


class Status(StrEnum):
    """A trial's verdict about the candidate. Infrastructure failures are exceptions, never a Status.

    Except STARVED: the host denied the trial its compute (sandbox/compute.py), so the trial says
    nothing about the candidate. It is a value because the trial did run to an end, but it is never
    judged: the loop re-runs it (harness/loop.py) and never records it as a keep, discard or crash.
    """

    OK = "ok"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OOM = "oom"
    OUTPUT_LIMIT = "output_limit"
    REJECTED = "rejected"
    STARVED = "starved"
