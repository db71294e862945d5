"""Every name that crosses a process or container boundary, in one place.

The controller, the container entrypoints, train.py's environment and the tests all read these, so a
rename happens once. Nothing here imports torch or docker at import time: it is safe to import anywhere.
The names the in-container code also needs are defined in `sandbox.incontainer.constants` (the trainer
image holds that package, not this module) and re-exported here.

The data folder's layout and the two variables pointing at it (`_FROM_PREPARE`) are defined once, in
prepare.py (the frozen contract, which imports nothing of this project), and read from it on first use
(PEP 562): importing prepare loads torch, which most of the controller never needs.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Final

# The names that cross the container boundary are defined in the in-container zone (the trainer image
# holds that package and not this module); re-exported here (`X as X`) so the controller reads one set.
from sandbox.incontainer.constants import ARTIFACT_FILE as ARTIFACT_FILE
from sandbox.incontainer.constants import CONTAINER_APP as CONTAINER_APP
from sandbox.incontainer.constants import CONTAINER_ARTIFACT as CONTAINER_ARTIFACT
from sandbox.incontainer.constants import CONTAINER_CANDIDATE as CONTAINER_CANDIDATE
from sandbox.incontainer.constants import CONTAINER_DATA as CONTAINER_DATA
from sandbox.incontainer.constants import CONTAINER_GID as CONTAINER_GID
from sandbox.incontainer.constants import CONTAINER_OUT as CONTAINER_OUT
from sandbox.incontainer.constants import CONTAINER_REPORT_DIR as CONTAINER_REPORT_DIR
from sandbox.incontainer.constants import CONTAINER_UID as CONTAINER_UID
from sandbox.incontainer.constants import CONTAINER_WORKDIR as CONTAINER_WORKDIR
from sandbox.incontainer.constants import ENV_OUT as ENV_OUT
from sandbox.incontainer.constants import ENV_SEED as ENV_SEED
from sandbox.incontainer.constants import EVALUATOR_ERROR_EXIT as EVALUATOR_ERROR_EXIT
from sandbox.incontainer.constants import EVALUATOR_MODULE as EVALUATOR_MODULE
from sandbox.incontainer.constants import JAIL as JAIL
from sandbox.incontainer.constants import REPORT_FILE as REPORT_FILE
from sandbox.incontainer.constants import Status as Status

# The data folder (host: ~/.cache/autoresearch/<profile>/; container: /data) and the environment
# variables pointing at it; defined in prepare.py.
_FROM_PREPARE: Final = frozenset(
    "ENV_PROFILE ENV_DATA TRAIN_DIRNAME VAL_DIRNAME TOKENIZER_DIRNAME TOKENIZER_FILE TOKEN_BYTES_FILE "
    "DATA_MANIFEST_FILE".split()
)
if TYPE_CHECKING:  # re-exported (`X as X`): mypy checks every use against prepare's definitions
    from prepare import DATA_MANIFEST_FILE as DATA_MANIFEST_FILE
    from prepare import ENV_DATA as ENV_DATA
    from prepare import ENV_PROFILE as ENV_PROFILE
    from prepare import TOKEN_BYTES_FILE as TOKEN_BYTES_FILE
    from prepare import TOKENIZER_DIRNAME as TOKENIZER_DIRNAME
    from prepare import TOKENIZER_FILE as TOKENIZER_FILE
    from prepare import TRAIN_DIRNAME as TRAIN_DIRNAME
    from prepare import VAL_DIRNAME as VAL_DIRNAME
else:

    def __getattr__(name: str) -> str:
        if name not in _FROM_PREPARE:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import prepare  # trusted, frozen; deferred because it imports torch

        value: str = getattr(prepare, name)
        globals()[name] = value
        return value


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


class Decision(StrEnum):
    """What the judge makes of a trial (results.tsv's status column)."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    BASELINE = "baseline"
    CANARY = "canary"  # a control trial (harness/canary.py): never judged, never in results.tsv


class ExitCode(IntEnum):
    """Exit codes of every command (`python -m harness ...`, `python -m sandbox.build`): one meaning each.

    0 is success (for `trial`: any verdict about the candidate, whatever its status); every other code
    names what to fix next. 7 was preflight's "could not run" before the tables were merged: retired.
    """

    OK = 0
    ERROR = 1  # the sandbox or the run failed (the message says why); verify-ledger: history does not verify
    CONFIG = 2  # the configuration is broken (argparse's usage error is 2 as well)
    ENGINE = 3  # the engine is unreachable: make engine
    IMAGE = 4  # an image is missing: make images
    DATA = 5  # the profile's data is missing: make data
    EVALUATOR = 6  # the evaluator failed (see eval.log)
    ISOLATION_BROKEN = 8  # preflight: a property does not hold; run: the canary was not rejected
    CAP = 9  # a cost or token cap was reached (raise it and run the same command to continue)
    LOCAL_NOT_ACKNOWLEDGED = 10  # run: the local backend with an LLM agent, without the acknowledgement flag
    HOST_STARVED = 11  # run: paused, the host starved too many runs in a row (resume once it is quieter)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (run the same command to resume)


RESULTS_TSV_COLUMNS: Final = ("commit", "val_bpb", "memory_gb", "status", "description")
