"""Ctrl-C reaches a worker thread in the middle of a trial, but never while it writes its records.

`harness/interrupts.py` raises KeyboardInterrupt inside a worker thread (signals reach the main thread
only). A worker polling in a trial is stopped promptly; a worker inside `held()` (the loop's record
writing: ledger row, results.tsv row, lineage ref) finishes the section untouched and gets the
interruption on the way out, as the main thread's signal holding does; a worker asked to stop
before it opens stops when it opens. Without the `_open` check in `Guard.interrupt`, the exception
lands inside `held()` and the second test fails.
"""

from __future__ import annotations

import threading
import time

from harness import interrupts
from tests.workers_fakes import WAIT_S, wait_until


def run_worker(body: object) -> tuple[threading.Thread, interrupts.Guard, list[str]]:
    guard = interrupts.Guard("w0")
    events: list[str] = []
    ready = threading.Event()

    def target() -> None:
        guard.bind()
        try:
            guard.open()
            ready.set()
            body(events)  # type: ignore[operator]
            events.append("body returned")
        except KeyboardInterrupt:
            events.append("interrupted")
        finally:
            guard.close_finally()
            events.append("cleaned up")

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(WAIT_S)
    return thread, guard, events


def test_a_polling_worker_is_interrupted_promptly() -> None:
    def body(events: list[str]) -> None:
        events.append("polling")
        wait_until(lambda: False, "an interruption")  # a trial that never ends by itself

    thread, guard, events = run_worker(body)
    wait_until(lambda: "polling" in events, "the worker to poll")
    guard.interrupt()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert events == ["polling", "interrupted", "cleaned up"]


def test_an_interruption_waits_until_the_records_are_written() -> None:
    inside = threading.Event()
    asked = threading.Event()

    def body(events: list[str]) -> None:
        with interrupts.held():
            inside.set()
            assert asked.wait(WAIT_S)
            for i in range(200):  # many bytecode boundaries where an exception could land
                time.sleep(0.001)
                if i in (0, 199):
                    events.append(f"row {i}")
            events.append("records complete")
        events.append("after the records")  # never reached: the interruption is raised on the way out

    thread, guard, events = run_worker(body)
    assert inside.wait(WAIT_S)
    guard.interrupt()
    asked.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert events == ["row 0", "row 199", "records complete", "interrupted", "cleaned up"]


def test_a_worker_asked_to_stop_before_it_opens_stops_when_it_opens() -> None:
    guard = interrupts.Guard("w1")
    guard.interrupt()
    try:
        guard.open()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("open() after interrupt() did not raise")


def test_threads_without_a_guard_are_untouched() -> None:
    assert interrupts.current() is None
    with interrupts.held():
        pass
