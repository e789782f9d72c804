"""The server's services (docs/protocol.md, section 11): workers that serve named calls.

A client registers as a worker of a service with a REQUEST ``"x": "serve"``
(``d``: the name) and leaves with ``"x": "unserve"``. A call is a REQUEST
``"x": "call"`` with ``"s": name``; the server forwards it, with the same
extension, to one worker, and relays the worker's answer (or error) to the
caller. ``Services`` is a mixin of ``server.IPCServer``, as ``pubsub.PubSub``
is; the bookkeeping (who serves what, calls in flight, calls waiting) is
``ServiceRegistry``, without I/O.

The worker with the fewest calls in flight is picked, ties in turn. A worker
takes at most ``max_concurrent_requests`` calls at once; when every worker of
a service is that busy, a call waits (within its timeout) for one to free
up, and at most ``MAX_WAITING`` calls wait per service. A call to a service
no worker serves fails at once (``NoRespondersError``); a worker lost while
handling one fails it at once (``ConnectionClosedError``): a call is never
run twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from .endpoint import Endpoint
from .errors import (
    ConnectionClosedError,
    IPCError,
    NoRespondersError,
    RemoteError,
    RequestTimeoutError,
)
from .events import shorten
from .options import DEFAULT_TIMEOUT, check_timeout
from .packets import call_fields
from .topics import service_error
from .writes import Responder

__all__ = ["MAX_WAITING", "ServiceRegistry", "Services"]

logger = logging.getLogger("ipc_server.server")

MAX_WAITING = 10_000
"""Calls that may wait for a free worker, per service; beyond, ``IPCError`` "service busy"."""

C = TypeVar("C", bound=Endpoint)
W = TypeVar("W", bound=Hashable)


class ServiceRegistry(Generic[W]):
    """Who serves which service, their calls in flight, and the calls waiting for one.

    Args:
        max_in_flight: Calls one worker takes at once (None: no bound).
        max_per_worker: Services one worker may serve (None: no bound).
    """

    def __init__(self, max_in_flight: int | None, max_per_worker: int | None) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_worker = max_per_worker
        self._workers: dict[str, dict[W, None]] = {}
        self._served: dict[W, set[str]] = {}
        self._in_flight: dict[W, int] = {}
        self._turn: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def add(self, worker: W, name: str) -> str | None:
        """``worker`` serves ``name``; the reason if a bound refuses it, else None."""
        served = self._served.setdefault(worker, set())
        if name in served:
            return None
        most = self.max_per_worker
        if most is not None and len(served) >= most:
            return f"{len(served) + 1} services, over max_topics_per_connection={most}"
        served.add(name)
        self._workers.setdefault(name, {})[worker] = None
        self._wake(name)  # a call waiting for a free worker may take this one
        return None

    def remove(self, worker: W, name: str) -> bool:
        """``worker`` no longer serves ``name``; True if it did."""
        served = self._served.get(worker)
        if not served or name not in served:
            return False
        served.discard(name)
        if not served:
            del self._served[worker]
        workers = self._workers[name]
        del workers[worker]
        if not workers:
            del self._workers[name]
            self._turn.pop(name, None)
            self._wake_all(name)  # waiting calls learn there is nobody left
        return True

    def forget(self, worker: W) -> None:
        """``worker`` is gone: it serves nothing any more."""
        for name in list(self._served.get(worker, ())):
            self.remove(worker, name)
        self._in_flight.pop(worker, None)

    def workers(self, name: str) -> list[W]:
        """The workers of ``name``, in registration order."""
        return list(self._workers.get(name, ()))

    def services(self) -> dict[str, int]:
        """Each service and how many workers serve it."""
        return {name: len(workers) for name, workers in self._workers.items()}

    def in_flight(self, worker: W) -> int:
        """Calls ``worker`` is handling now."""
        return self._in_flight.get(worker, 0)

    def pick(self, name: str) -> W | None:
        """The worker of ``name`` with the fewest calls in flight (ties in turn), or None
        when every one is at ``max_in_flight``.

        Raises:
            NoRespondersError: No worker serves ``name``.
        """
        workers = self._workers.get(name)
        if not workers:
            raise NoRespondersError(name)
        members = list(workers)
        count = len(members)
        start = self._turn.get(name, 0) % count
        best: W | None = None
        least = -1
        for step in range(count):
            worker = members[(start + step) % count]
            load = self._in_flight.get(worker, 0)
            if best is None or load < least:
                best, least = worker, load
                if load == 0:
                    break
        most = self.max_in_flight
        if best is None or (most is not None and least >= most):
            return None
        self._turn[name] = members.index(best) + 1
        return best

    def begin(self, worker: W) -> None:
        """A call went to ``worker``."""
        self._in_flight[worker] = self._in_flight.get(worker, 0) + 1

    def end(self, worker: W) -> None:
        """A call of ``worker`` is over: a call waiting for one of its services may go."""
        left = self._in_flight.get(worker, 0) - 1
        if left > 0:
            self._in_flight[worker] = left
        else:
            self._in_flight.pop(worker, None)
        for name in self._served.get(worker, ()):
            if self._wake(name):
                break

    def wait(self, name: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future set when a worker of ``name`` may be free (or the last one left).

        Raises:
            IPCError: ``MAX_WAITING`` calls wait for ``name`` already.
        """
        queue = self._waiting.setdefault(name, deque())
        if len(queue) >= MAX_WAITING:
            raise IPCError(
                f"service busy: {MAX_WAITING} calls to {name!r} wait for a free worker",
                option="max_concurrent_requests",
            )
        waiter: asyncio.Future[None] = loop.create_future()
        queue.append(waiter)
        return waiter

    def waiting(self, name: str) -> int:
        """Calls waiting for a free worker of ``name``."""
        queue = self._waiting.get(name)
        return 0 if queue is None else sum(1 for w in queue if not w.done())

    def _wake(self, name: str) -> bool:
        queue = self._waiting.get(name)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not queue:
                    del self._waiting[name]
                return True
        self._waiting.pop(name, None)
        return False

    def _wake_all(self, name: str) -> None:
        for waiter in self._waiting.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)


class Services(Generic[C]):
    """Workers, calls and their relay over a server's connections (a mixin)."""

    # Set by the server that inherits this (server.IPCServer).
    _services: ServiceRegistry[C]

    def _report_error(self, exc: BaseException, connection: C | None) -> None:
        raise NotImplementedError

    def workers(self, name: str) -> list[C]:
        """The connections serving ``name`` (an empty list when none does)."""
        return self._services.workers(name)

    @property
    def services(self) -> dict[str, int]:
        """Each service with at least one worker, and how many workers serve it."""
        return self._services.services()

    async def call(
        self, name: str, data: Any = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Any:
        """Call service ``name`` with ``data``: one of its workers answers.

        Raises:
            NoRespondersError: No worker serves ``name`` (at once).
            RequestTimeoutError: No answer within ``timeout`` seconds (waiting for a
                free worker included).
            ConnectionClosedError: The worker was lost while handling it.
            IPCError: Too many calls wait for a free worker ("service busy").
            RemoteError: The worker's handler raised.
        """
        error = service_error(name)
        if error is not None:
            raise ValueError(f"invalid service name: {error}")
        return await self._call(name, data, check_timeout(timeout))

    async def _call(self, name: str, data: Any, seconds: float | None) -> Any:
        registry = self._services
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        worker = registry.pick(name)
        while worker is None:  # every worker is at its bound: wait for one
            waiter = registry.wait(name, loop)
            left = None if deadline is None else deadline - loop.time()
            try:
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(waiter, left)
            except (asyncio.TimeoutError, TimeoutError):
                raise RequestTimeoutError(seconds or 0.0, "call") from None
            finally:
                waiter.cancel()
            worker = registry.pick(name)
        registry.begin(worker)
        try:
            left = None if deadline is None else max(0.001, deadline - loop.time())
            try:
                return await worker.extended_request(data, call_fields(name), left)
            except ConnectionClosedError as exc:
                raise ConnectionClosedError(
                    f"the worker {shorten(getattr(worker, 'id', worker))} of {name!r} was lost "
                    f"while handling the call ({exc.reason})"
                ) from None
        finally:
            registry.end(worker)

    # ------------------------------------------------------------------ the extension's requests

    def service_request(self, conn: C, x: str, packet: dict[str, Any], respond: Responder) -> None:
        """Answer a ``serve``, ``unserve`` or ``call`` REQUEST of ``conn`` (``packets.SERVE``...).

        Called by the server's connections (``IPCConnection``); not for applications.
        """
        registry = self._services
        if x == "call":
            name = packet.get("s")
            error = service_error(name)
            if error is not None:
                respond.fail(ValueError(f"invalid service name: {error}"))
                return
            assert isinstance(name, str)
            seconds = None
            if respond.deadline is not None:
                seconds = max(0.001, respond.deadline - asyncio.get_running_loop().time())
            # In a task of the caller's connection: a cancel notice from the caller cancels it.
            respond.handle(self._relay(name, packet.get("d"), seconds, respond))
            return
        name = packet.get("d")
        error = service_error(name)
        if error is not None:
            respond.fail(ValueError(f"invalid service name: {error}"))
            return
        assert isinstance(name, str)
        if x == "serve":
            refusal = registry.add(conn, name)
            if refusal is not None:
                problem = IPCError(f"serve refused: {refusal}", option="max_topics_per_connection")
                self._report_error(problem, conn)
                respond.fail(problem, own=True)
                return
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s serves %s", shorten(getattr(conn, "id", conn)), shorten(name))
            respond(True)
        else:
            respond(registry.remove(conn, name))

    async def _relay(self, name: str, data: Any, seconds: float | None, respond: Responder) -> None:
        try:
            result = await self._call(name, data, seconds)
        except asyncio.CancelledError:
            raise  # the caller gave up (or is gone): nothing to answer
        except IPCError as exc:
            respond.fail(exc, own=not isinstance(exc, RemoteError))  # a worker's error as it came
            return
        except Exception as exc:
            respond.fail(exc)
            return
        await respond(result)
