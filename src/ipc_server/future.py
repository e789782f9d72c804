"""The future a request returns: ``Pending``, an ``asyncio.Future`` that is also a coroutine.

A request is sent when ``request()`` is called, and what it returns is a
``Pending``. As a future, ``await``, ``asyncio.gather``, ``wait_for``,
``shield`` and ``asyncio.timeout`` take it as it is, so a ``gather`` of many
requests creates no Task per request; as a coroutine, ``create_task``,
``TaskGroup.create_task`` and ``run_coroutine_threadsafe`` take it too.
Cancelling it (directly, or the task awaiting it) drops its entry from the
table that holds it (``pending.RequestTable``); a late answer is then ignored.

It lives apart from its table because it stays interpreted in the compiled
core: mypyc cannot compile a subclass of ``asyncio.Future``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Protocol

__all__ = ["Pending", "Table"]


class Table(Protocol):
    """What a ``Pending`` needs of the table that holds it (``pending.RequestTable``)."""

    def _forget(self, nonce: str) -> None:
        """Drop the entry of ``nonce``: its request was cancelled."""


class Pending(asyncio.Future[Any], Coroutine[Any, Any, Any]):
    """A request (or ping) in flight: a future of its answer, and a coroutine that awaits it.

    ``asyncio.wait`` refuses it (it refuses every coroutine): wrap it in a task
    there, ``asyncio.wait([asyncio.create_task(client.request(x))])``.
    """

    # Made with asyncio.Future's own __init__ (no Python frame per request); the table
    # sets these two at once, and keeps the rest of the bookkeeping in its entry.
    __slots__ = ("_nonce", "_steps", "_table")

    _table: Table
    _nonce: str
    _steps: Generator[Any, None, Any]

    @property
    def nonce(self) -> str | None:
        """The request's nonce (None if it failed before it was sent)."""
        return getattr(self, "_nonce", None)

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the request: its answer, if one comes, is dropped."""
        if not super().cancel(msg):
            return False
        self._table._forget(self._nonce)
        return True

    # The coroutine protocol, for create_task and the like: await the future.

    def _iterate(self) -> Generator[Any, None, Any]:
        try:
            return self._steps
        except AttributeError:
            steps = self._steps = asyncio.Future.__await__(self)
            return steps

    def send(self, value: Any) -> Any:
        return self._iterate().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # The task that runs it is cancelled (before its first step, say): so is the request.
        error = typ if val is None else val
        if isinstance(error, asyncio.CancelledError) or (
            isinstance(error, type) and issubclass(error, asyncio.CancelledError)
        ):
            self.cancel()
        if val is None and tb is None:
            return self._iterate().throw(typ)
        return self._iterate().throw(typ, val, tb)

    def close(self) -> None:
        if not self.done():
            self.cancel()
