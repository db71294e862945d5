"""The one place that decides which engine failures are retried and how they surface.

Two tools, used by every module that talks to the engine:

- `infra_retry`: a tenacity decorator for idempotent infrastructure steps (ping, inspect, create a
  volume, start a container, remove something). It retries only what a retry can fix: the engine
  not answering (connection refused or reset, read timeouts) and server-side errors (HTTP 5xx).
  Client errors (4xx: not found, conflict, bad request) are never retried.
- `engine_errors(step)`: a context manager that turns docker-py and requests exceptions into the
  sandbox's typed errors (`EngineUnavailable`, `ImageMissing`, `SandboxError`), with the step
  that failed and what to do next in the message.

Deliberately NOT retried: the candidate's run. A TRAIN container that ran and failed is a verdict,
and re-running it as if the engine had hiccupped would hand the candidate a second budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import docker.errors
import requests.exceptions
import tenacity

from sandbox.verdict import EngineUnavailable, ImageMissing, SandboxError

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ATTEMPTS = 4  # one try and three retries: about 0.25 + 0.5 + 1 s of waiting in all
ENGINE_HINT = "is the Docker engine running? run `make engine` (or `sudo sandbox/scripts/ensure-engine.sh`)"
IMAGE_HINT = "run `make images` to build it"


def is_transient(exc: BaseException) -> bool:
    """True for the failures a retry can fix: the engine not answering, or a 5xx from it."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(exc, docker.errors.APIError) and exc.is_server_error()


_POLICY = tenacity.retry(
    retry=tenacity.retry_if_exception(is_transient),
    stop=tenacity.stop_after_attempt(ATTEMPTS),
    wait=tenacity.wait_exponential(multiplier=0.25, max=4.0),
    before_sleep=tenacity.before_sleep_log(logger, logging.WARNING),
    reraise=True,
)


def infra_retry(fn: F) -> F:
    """`fn` wrapped in the infrastructure retry policy (use on idempotent engine calls only)."""
    return cast(F, _POLICY(fn))


@contextmanager
def engine_errors(step: str) -> Iterator[None]:
    """Translate engine exceptions raised inside the block into the sandbox's typed errors."""
    try:
        yield
    except SandboxError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageMissing(f"{step}: image not found ({exc.explanation}); {IMAGE_HINT}") from exc
    except requests.exceptions.ConnectionError as exc:
        raise EngineUnavailable(f"{step}: cannot reach the Docker engine ({exc}); {ENGINE_HINT}") from exc
    except requests.exceptions.Timeout as exc:
        raise EngineUnavailable(f"{step}: the Docker engine did not answer in time ({exc})") from exc
    except docker.errors.APIError as exc:
        raise SandboxError(
            f"{step}: the Docker engine refused ({exc.status_code}): {exc.explanation}"
        ) from exc
    except docker.errors.DockerException as exc:
        # docker-py raises the bare base class when it cannot even negotiate an API version.
        raise EngineUnavailable(f"{step}: {exc}; {ENGINE_HINT}") from exc
