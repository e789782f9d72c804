"""The asyncio client's services and streams: ``serve``, ``unserve``, ``call``, ``stream``.

``Calls`` is a mixin of ``client.IPCClient``. A worker registers a handler
for a service name (``serve``); the server sends it calls as REQUEST
packets with ``"x": "call"`` (docs/protocol.md, section 11), which reach that
handler instead of the ``request`` listeners. ``call`` asks the server to have
a worker answer; ``stream`` asks the server for an answer in items
(``streams.Stream``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

from .clientcore import ClientCore
from .endpoint import Endpoint
from .errors import IPCError
from .events import shorten
from .options import DEFAULT, Default
from .packets import MAX_WINDOW, SERVE, UNSERVE, call_fields
from .streams import Stream, StreamReader

__all__ = ["Calls", "check_window"]

logger = logging.getLogger("ipc_server.client")

F = TypeVar("F", bound=Callable[..., Any])


def check_window(window: int) -> int:
    """``window`` if it is a valid stream window (an int from 1 to ``MAX_WINDOW``).

    Raises:
        ValueError: It is not.
    """
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be an int from 1 to {MAX_WINDOW}, not {window!r}")
    return window


class Calls(ClientCore):
    """``serve``, ``unserve``, ``call`` and ``stream`` of the asyncio ``IPCClient`` (a mixin)."""

    # Set by the client that inherits this (client.IPCClient).
    _live: Endpoint | None
    request_timeout: float | None

    async def _connection(self, timeout: float | None) -> tuple[Any, float | None]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the worker's side

    @overload
    def serve(
        self, name: str, handler: None = None, *, timeout: float | Default | None = DEFAULT
    ) -> Callable[[F], F]: ...
    @overload
    def serve(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        timeout: float | Default | None = DEFAULT,
    ) -> Coroutine[Any, Any, bool]: ...
    def serve(
        self,
        name: str,
        handler: Callable[..., Any] | None = None,
        *,
        timeout: float | Default | None = DEFAULT,
    ) -> Callable[[F], F] | Coroutine[Any, Any, bool]:
        """Serve calls of service ``name`` with ``handler(request, respond)``, as a worker.

        ``await client.serve(name, handler)`` is True once the server has the
        registration. Without a handler, ``serve(name)`` is a decorator that
        registers in the background (a failure is reported on ``error``).
        The registration is restored after a reconnect, as subscriptions are.

        Raises:
            ValueError: ``name`` is not a valid service name (topic rules, no wildcard).
            IPCError: The server has no services (a Node server).
        """
        self._service_check(name)
        if handler is None:

            def decorator(fn: F) -> F:
                self._served[name] = fn
                if self._live is not None:
                    coro = self._register(name, timeout)
                    asyncio.get_running_loop().create_task(self._quietly(coro, name))
                return fn

            return decorator
        self._served[name] = handler
        return self._register(name, timeout)

    async def _register(self, name: str, timeout: float | Default | None) -> bool:
        seconds = self.request_timeout if timeout is DEFAULT else timeout
        proto = self._live
        if proto is None:
            proto, seconds = await self._connection(seconds)
            self._service_check(name)  # the server may be another one now
        ok: bool = await proto.extended_request(name, {"x": SERVE}, seconds) is True
        return ok

    async def _quietly(self, coro: Coroutine[Any, Any, bool], name: str) -> None:
        try:
            if not await coro:
                self._report(IPCError(f"the server refused to register service {name!r}"))
        except Exception as exc:
            self._report(exc)
        else:
            logger.debug("serving %s", shorten(name))

    async def unserve(self, name: str, *, timeout: float | Default | None = DEFAULT) -> bool:
        """Stop serving ``name``; False when this client did not serve it."""
        self._service_check(name)
        known = self._served.pop(name, None) is not None
        seconds = self.request_timeout if timeout is DEFAULT else timeout
        proto = self._live
        if proto is None:
            return known  # not connected: there is nothing to tell the server
        left: bool = await proto.extended_request(name, {"x": UNSERVE}, seconds) is True
        return left or known

    # ------------------------------------------------------------------ the caller's side

    async def call(
        self, name: str, data: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> Any:
        """Call service ``name`` with ``data``: a worker's answer, through the server.

        Raises:
            NoRespondersError: No worker serves ``name`` (at once, not a timeout).
            RequestTimeoutError: No answer within ``timeout`` (default:
                ``request_timeout``), waiting for a free worker included.
            ConnectionClosedError: The worker was lost while handling it (it is
                never sent to another), or this client's connection closed.
            IPCError: Too many calls wait for a free worker ("service busy"), or
                the server has no services.
            RemoteError: The worker's handler raised.
        """
        self._service_check(name)
        seconds = self.request_timeout if timeout is DEFAULT else timeout
        proto = self._live
        if proto is None:
            proto, seconds = await self._connection(seconds)
            self._service_check(name)
        return await proto.extended_request(data, call_fields(name), seconds)

    def stream(
        self, data: Any, *, timeout: float | Default | None = DEFAULT, window: int = 64
    ) -> Stream:
        """Ask for an answer in items: ``async for item in client.stream(data)``.

        The server's handler answers with ``respond.stream(iterable)``; it runs
        at most ``window`` items ahead of what this loop consumed. ``timeout``
        (default: ``request_timeout``) bounds the wait for each item. Leaving
        the loop early stops the producer (at once with ``async with
        client.stream(data) as items``). A server without streams answers
        once: its answer is the stream (a list is its items).

        Raises (while iterating):
            RequestTimeoutError: No item within ``timeout``.
            RemoteError: The producer raised (after the items before it).
            ConnectionClosedError: The connection closed before the end.
        """
        check_window(window)
        seconds = self.request_timeout if timeout is DEFAULT else timeout

        async def start() -> StreamReader:
            proto = self._live
            if proto is None:
                proto, _ = await self._connection(seconds)
            return proto.open_stream(data, window)

        return Stream(start, seconds)
