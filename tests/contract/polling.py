"""Waiting with a deadline from the test thread: polling, recorded events, calls on a thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEADLINE = 10.0
"""Bound on any single wait in the suite, so that a hang fails the test instead of stalling it."""


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.002)


class Recorder(Generic[T]):
    """A thread-safe list of what a listener or handler was called with.

    Listeners run on other threads (the client's loop thread, the blocking
    client's listener thread, the server's loop thread): the test reads a copy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def __call__(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    @property
    def items(self) -> list[T]:
        """What was recorded so far, in order."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def wait_for(self, count: int, what: str, timeout: float = DEADLINE) -> list[T]:
        """Wait until at least ``count`` items were recorded; return them all."""
        wait_until(lambda: len(self) >= count, f"{count} x {what} (got {self.items!r})", timeout)
        return self.items


class Background(Generic[T]):
    """``fn()`` called on a daemon thread; its outcome is waited for with a deadline.

    A daemon thread, not an executor's: a call that hangs must not hang the
    interpreter's exit as well.
    """

    def __init__(self, fn: Callable[[], T], what: str) -> None:
        self.what = what
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        threading.Thread(target=self._run, args=(fn,), name=what, daemon=True).start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            result = fn()
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)

    def done(self) -> bool:
        """Whether the call has returned or raised."""
        return self._future.done()

    def still_running(self, after: float) -> bool:
        """Whether the call is still running ``after`` seconds from now (returns early if it ends)."""
        concurrent.futures.wait([self._future], after)
        return not self._future.done()

    def _wait(self, timeout: float) -> None:
        concurrent.futures.wait([self._future], timeout)
        if not self._future.done():
            raise AssertionError(f"{self.what} did not return within {timeout:g} s")

    def result(self, timeout: float = DEADLINE) -> T:
        """What the call returned (or raise what it raised); fail if it runs past ``timeout``."""
        self._wait(timeout)
        return self._future.result()

    def exception(self, timeout: float = DEADLINE) -> BaseException | None:
        """What the call raised (None if it returned); fail if it runs past ``timeout``."""
        self._wait(timeout)
        return self._future.exception()
