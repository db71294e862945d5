"""Stopping a worker thread in the middle of a trial, but never in the middle of writing its records.

Python delivers SIGINT and SIGTERM to the main thread only. With `--workers N` the trials run in
worker threads, blocked in `Sandbox.run_trial` (the Docker backend polls the engine; the local one
polls its child) or in an agent's call, and neither has a cancel switch. So on Ctrl-C the
controller raises KeyboardInterrupt *inside* each worker thread (`PyThreadState_SetAsyncExc`),
exactly as a signal does in a single-worker run: the sandbox's `finally` removes the containers,
the worker's `finally` releases its lease, and the trial, which has no ledger row, is re-run by the
next `run` like any interrupted trial.

Deliberate properties:
- One interruption per worker, at most, and only while the worker is *open* (`Guard.open()`): a
  worker holding its records back (`held()`, the thread's counterpart of the loop's signal holding)
  is never interrupted; the request waits and is raised when it leaves the section, after the
  records are complete. A request for a worker that is not open is raised when it next opens.
- The exception is asynchronous: CPython raises it at the thread's next bytecode boundary, so a
  worker blocked in a C call (a socket read, `time.sleep`) sees it when that call returns. Waits
  under the controller's control are short or use `Guard.sleep` (an event wait the interruption
  cuts short).
- Only worker threads get guards; the main thread keeps real signal handling.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

_current = threading.local()


def _raise_in(thread_id: int) -> bool:
    """Schedule KeyboardInterrupt in the thread; False when no such thread runs Python."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(KeyboardInterrupt)
    )
    return bool(changed)


class Guard:
    """One worker thread's interruption state. The worker opens and closes it; anyone may `interrupt`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._open = False
        self._requested = False
        self._sent = False
        self._wake = threading.Event()

    def bind(self) -> None:
        """Make this the calling thread's guard (the worker calls it first thing)."""
        self._thread_id = threading.get_ident()
        _current.guard = self

    def open(self) -> None:
        """From now on the worker may be interrupted; raises at once if it already was asked to stop."""
        with self._lock:
            if self._requested:
                raise KeyboardInterrupt(f"{self.name}: stop requested")
            self._open = True

    def close(self) -> None:
        """No interruption arrives after this returns (one already scheduled may raise in this call)."""
        with self._lock:
            self._open = False

    def close_finally(self) -> None:
        """`close` for the worker's last `finally`: an interruption landing here is swallowed."""
        while True:
            try:
                self.close()
                return
            except KeyboardInterrupt:
                continue

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No interruption inside; one requested meanwhile is raised on the way out."""
        was_open = self._open
        self.close()
        try:
            yield
        finally:
            if was_open:
                self.open()

    def interrupt(self) -> None:
        """Ask the worker to stop: raise KeyboardInterrupt in it now if it is open, else when it opens."""
        with self._lock:
            self._requested = True
            self._wake.set()
            if self._open and not self._sent and self._thread_id is not None:
                self._sent = True
                self._open = False  # one exception, once: nothing more is scheduled
                if _raise_in(self._thread_id):
                    logger.info("%s: interrupted", self.name)

    def sleep(self, seconds: float) -> None:
        """A wait that an interruption cuts short (for the loop's retry backoffs)."""
        self._wake.wait(seconds)


def current() -> Guard | None:
    """The calling thread's guard, or None (the main thread, or a thread that is not a worker)."""
    return getattr(_current, "guard", None)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """The calling worker's `Guard.held()`; nothing in a thread without a guard."""
    guard = current()
    if guard is None:
        yield
        return
    with guard.held():
        yield
