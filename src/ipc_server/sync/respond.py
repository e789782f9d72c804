"""The ``respond`` callable of the blocking client: how its listeners and workers answer.

The server's requests (``request`` listeners) and calls (``serve`` handlers)
run on the client's listener thread, as plain functions; ``SyncRespond``
writes their answer on the socket from there. A server of this library
tells the client when it gives up on a request (its timeout passed, its
caller cancelled): a plain function cannot be stopped, so the request is
marked ``cancelled``, its answer is dropped, and one not started yet never
runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable
from typing import Any

from ..errors import IPCError
from ..events import DONE, Respond
from ..packets import RESPONSE, error_answer
from .connection import SEND_TIMEOUT, Connection, SendTimeout

__all__ = ["SyncRespond", "responder"]

_monotonic = time.monotonic


class SyncRespond(Respond):
    """The ``respond`` callable of the blocking client (see ``ipc_server.Respond``).

    It returns once the answer is written (the awaitable it returns is done).

    Attributes:
        deadline: When the requester gives up, on ``time.monotonic()``'s clock
            (None: it sent no timeout).
        cancelled: Whether the server gave up on the request (its timeout passed,
            or its caller cancelled): an answer is then dropped, and a handler
            that runs long may check it to stop early.
    """

    __slots__ = ("_conn", "_lock", "_nonce", "cancelled")

    def __init__(self, conn: Connection, nonce: Any, deadline: float | None = None) -> None:
        self.done = False
        self.deadline = deadline
        self.cancelled = False
        self._conn = conn
        self._nonce = nonce
        self._lock = threading.Lock()

    def _claim(self) -> bool:
        with self._lock:
            if self.done:
                return False
            self.done = True
            return True

    def cancel_by_peer(self) -> None:
        """The server gave up on the request (a cancel notice): nothing more is answered."""
        with self._lock:
            self.cancelled = True
            self.done = True

    def _untrack(self) -> None:
        conn = self._conn
        if conn.cancel:
            with conn.lock:
                if conn.running.get(self._nonce) is self:
                    del conn.running[self._nonce]

    def __call__(self, data: Any = None) -> Awaitable[None]:
        if not self._claim():
            if self.cancelled:
                return DONE  # the server gave up on it: the answer is dropped, not wrong
            raise RuntimeError("this request was already answered")
        conn = self._conn
        if conn.dead:
            return DONE  # the requester is gone; nothing to answer
        try:
            conn.transmit(RESPONSE, data, self._nonce, _monotonic() + SEND_TIMEOUT)
        except TypeError:
            self.done = False  # not encodable: nothing was sent, the chain may still answer
            raise
        except SendTimeout:
            raise IPCError("could not answer the server: it does not read") from None
        finally:
            if self.done:
                self._untrack()
        return DONE

    def fail(self, exc: BaseException, *, own: bool = False) -> None:
        """Answer with an error (with ``own``, ``exc`` is this library's, raised as itself)."""
        if not self._claim() or self._conn.dead:
            return
        self._untrack()
        conn = self._conn
        with contextlib.suppress(IPCError, OSError, SendTimeout):
            conn.transmit_with(
                lambda: error_answer(conn.codec, self._nonce, exc, conn.remote_errors, own=own),
                _monotonic() + SEND_TIMEOUT,
            )

    def finish(self) -> None:
        if not self.done:
            with contextlib.suppress(RuntimeError, IPCError, OSError):
                self(None)


def responder(conn: Connection, nonce: str, deadline: float | None) -> SyncRespond:
    """The ``respond`` of request ``nonce`` of the server, which a cancel notice of the
    server reaches (lock held)."""
    respond = SyncRespond(conn, nonce, deadline)
    if conn.cancel:
        conn.running[nonce] = respond
    return respond
