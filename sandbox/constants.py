"""Every name that crosses a process or container boundary, in one place.

The controller, the container entrypoints, train.py's environment and the tests all read these, so a
rename happens once. Nothing here imports torch or docker: it is safe to import anywhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# Environment variables the controller sets inside containers (and that prepare.py / train.py read).
ENV_PROFILE: Final = "AUTORESEARCH_PROFILE"  # "tiny" | "gpu"
ENV_OUT: Final = "AUTORESEARCH_OUT"  # folder where train.py writes model.pt2
ENV_DATA: Final = "AUTORESEARCH_DATA"  # the profile's data folder (holds train/, val/, tokenizer/)
ENV_SEED: Final = "AUTORESEARCH_SEED"  # seed the controller hands to the candidate

# Layout of one profile's data folder (host: ~/.cache/autoresearch/<profile>/; container: /data).
TRAIN_DIRNAME: Final = "train"
VAL_DIRNAME: Final = "val"
TOKENIZER_DIRNAME: Final = "tokenizer"
TOKENIZER_FILE: Final = "tokenizer.json"
TOKEN_BYTES_FILE: Final = "token_bytes.json"
DATA_MANIFEST_FILE: Final = "manifest.json"

# Paths inside the containers.
CONTAINER_WORKDIR: Final = "/workspace"
CONTAINER_CANDIDATE: Final = "/workspace/train.py"
CONTAINER_DATA: Final = "/data"
CONTAINER_OUT: Final = "/out"  # TRAIN: writable, size-capped
CONTAINER_ARTIFACT: Final = "/artifact"  # EVAL: the TRAIN output, read-only
CONTAINER_REPORT_DIR: Final = "/report"  # EVAL: small writable result channel
CONTAINER_APP: Final = "/opt/autoresearch"  # prepare.py and sandbox/ live here in the trainer image
# Every container command runs through the jail: a seccomp filter of the sandbox's own, then exec.
JAIL: Final = ("python", "-I", "-S", f"{CONTAINER_APP}/sandbox/jail.py")
CONTAINER_UID: Final = 65532
CONTAINER_GID: Final = 65532

# The artifact contract.
ARTIFACT_FILE: Final = "model.pt2"
REPORT_FILE: Final = "report.json"
EVALUATOR_ERROR_EXIT: Final = 2  # the evaluator could not run (its own failure, no report written)

# Files in a trial folder.
TRAIN_LOG_FILE: Final = "train.log"
EVAL_LOG_FILE: Final = "eval.log"
TRAIN_STATE_FILE: Final = "train_container.json"
EVAL_STATE_FILE: Final = "eval_container.json"
VERDICT_FILE: Final = "verdict.json"
CANDIDATE_FILE: Final = "train.py"
AUDIT_FILE: Final = "audit.jsonl"
SANDBOX_LOG_FILE: Final = "sandbox.log"  # the controller's own log of the trial's steps

# Labels on every container and volume we create, so a reaper can find what a dead controller left.
LABEL_APP: Final = "org.autoresearch.app"
LABEL_APP_VALUE: Final = "autoresearch-sandbox"
LABEL_TRIAL: Final = "org.autoresearch.trial"
LABEL_ROLE: Final = "org.autoresearch.role"  # train | eval | holder | probe
LABEL_OWNER_PID: Final = "org.autoresearch.owner-pid"
# Pids are only meaningful on one host and in one pid namespace, and they are reused: the reaper judges
# an owner dead only when the host matches and the pid is gone or now belongs to a younger process.
LABEL_OWNER_HOST: Final = "org.autoresearch.owner-host"
LABEL_OWNER_START: Final = "org.autoresearch.owner-start"  # the owner's start time, /proc/<pid>/stat field 22

TRAINER_IMAGE: Final = "autoresearch-trainer:latest"
CONTROLLER_IMAGE: Final = "autoresearch-controller:latest"
BASE_IMAGE_LOCAL: Final = "autoresearch-base:bookworm"


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


class Decision(StrEnum):
    """What the judge makes of a trial (results.tsv's status column)."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    BASELINE = "baseline"
    CANARY = "canary"  # a control trial (harness/canary.py): never judged, never in results.tsv


RESULTS_TSV_COLUMNS: Final = ("commit", "val_bpb", "memory_gb", "status", "description")
