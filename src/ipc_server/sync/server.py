"""The blocking ``IPCServer``: the asyncio server run on a private loop thread.

Imported as ``ipc_server.sync.IPCServer``. It also keeps the deadlock guard
that stops a blocking client call made on the loop thread of the very server
it talks to (``check_not_serving``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._loop import new_event_loop
from ..address import Address
from ..events import EventEmitter
from ..listeners import ServerListeners
from ..options import DEFAULT_TIMEOUT, address_args, check_timeout, option_values
from ..server import IPCConnection, ServerOptions, serving_loop
from ..server import IPCServer as AsyncIPCServer

__all__ = ["BlockingServerOptions", "IPCServer", "check_not_serving", "serving_threads"]

logger = logging.getLogger("ipc_server.sync")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_get_ident = threading.get_ident


# ---------------------------------------------------------------------- deadlock guard

_LOOP_OWNERS: dict[int, IPCServer] = {}
"""Loop thread id -> the blocking IPCServer whose private loop runs there."""


def serving_threads() -> bool:
    """Whether any server runs in this process (``check_not_serving`` has work to do)."""
    return bool(_LOOP_OWNERS) or serving_loop(None) is not None


def check_not_serving(address: Address, what: str) -> None:
    """Refuse a blocking client call on the loop thread of the sync server it talks to.

    The call would block that loop, and the loop is what must answer it.

    Raises:
        RuntimeError: Naming the call, and what to do instead.
    """
    loop = serving_loop(address)
    if loop is not None and loop.is_running():
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                f"the blocking IPCClient.{what}() was called on the thread of the event loop "
                f"that runs the IPCServer at {address}: it would wait for the loop it blocks "
                "(deadlock). In asyncio code use ipc_server.IPCClient (await client."
                f"{what}(...)), or make the blocking call from another thread."
            )
    if not _LOOP_OWNERS:
        return
    server = _LOOP_OWNERS.get(_get_ident())
    if server is not None and server._serves(address):
        raise RuntimeError(
            f"IPCClient.{what}() was called from a handler of the IPCServer it talks to, on "
            "that server's loop thread: it would wait for the loop it blocks (deadlock). "
            "Answer from the handler instead, or make the call from another thread."
        )


# ---------------------------------------------------------------------- the server


@dataclass(kw_only=True, eq=False, repr=False)
class BlockingServerOptions(ServerOptions):
    """``ServerOptions`` and what only the blocking server has.

    Args:
        loop_factory: Makes the loop its thread runs (default: uvloop's loop
            when uvloop is installed, else asyncio's).
    """

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (publish, broadcast) to its end, here and now."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()  # pragma: no cover - the asyncio server changed: it now suspends
    raise RuntimeError("operation suspended; it cannot run inline")  # pragma: no cover


class IPCServer(BlockingServerOptions, ServerListeners[IPCConnection]):
    """The asyncio ``ipc_server.server.IPCServer``, run on a private loop thread.

    For code without asyncio: ``start`` returns once the server listens;
    every other method blocks until done, with ``timeout=``. Handlers added with
    ``on`` run **on the server's loop thread**: plain functions and
    coroutine functions both work, and a handler that blocks (``time.sleep``,
    a blocking client call) blocks the whole server while it runs. Calling a
    method that waits on the loop (``survey``, ``ping``, ``close``, ``run``)
    from a handler raises ``RuntimeError`` (it would deadlock); use
    ``await server.aio.survey(...)`` in an async handler instead.
    ``publish`` and ``broadcast`` do not wait, so they work anywhere.

    ``ipc_server.server.IPCConnection`` objects (``connections``, handler
    arguments) belong to the loop: from other threads, use
    ``server.run(connection.request(data))``.

    The keyword options are those of the asyncio server
    ([`ServerOptions`][ipc_server.serveroptions.ServerOptions]), plus ``loop_factory``
    (``BlockingServerOptions``).
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        self.aio = AsyncIPCServer(
            **address_args(self.address), **option_values(self, ServerOptions)
        )
        """The asyncio server this wraps (use it from async handlers, on its loop)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<sync.IPCServer {self.aio.address} ready={self.is_ready}>"

    # ------------------------------------------------------------------ the loop thread

    def _serves(self, address: Address) -> bool:
        mine = self.aio.address
        if address.kind != mine.kind:
            return False
        if address.kind == "tcp":
            return address.port == self.aio.port
        return address.path == mine.path

    def _on_loop_thread(self) -> bool:
        thread = self._thread
        return thread is not None and thread.ident == _get_ident()

    def _guard(self, what: str) -> None:
        if self._on_loop_thread():
            raise RuntimeError(
                f"IPCServer.{what}() was called on the server's own loop thread (from a "
                "handler): it would wait for the loop it blocks (deadlock). In an async "
                f"handler use `await server.aio.{what}(...)`."
            )

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop_factory is not None:
            return self.loop_factory()
        return new_event_loop()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        _LOOP_OWNERS[_get_ident()] = self
        try:
            loop.run_forever()
        finally:
            del _LOOP_OWNERS[_get_ident()]
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _wait_for(
        self,
        make: Callable[[], Awaitable[T]],
        timeout: float | None,
        what: str,
    ) -> T:
        """Run ``make()`` on the loop and wait for it (``timeout``: None waits forever)."""
        self._guard(what)
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"IPCServer.{what}() needs a started server")

        async def run() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the operation itself raised TimeoutError
            future.cancel()
            raise TimeoutError(f"IPCServer.{what}() did not finish within {timeout:g} s") from None

    def _call(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the loop thread (directly when not started, or already there)."""
        loop = self._loop
        if loop is None or self._on_loop_thread():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(DEFAULT_TIMEOUT)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timeout: float | None = 10.0) -> IPCServer:
        """Start the loop thread and listen; returns once listening (emits ``ready``).

        Raises:
            AddressInUseError: A live server owns the address.
            RuntimeError: Already started.
        """
        seconds = check_timeout(timeout)
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("server already started")
            loop = self._new_loop()
            thread = threading.Thread(
                target=self._serve, args=(loop,), name="ipc_server loop", daemon=True
            )
            self._loop = loop
            self._thread = thread
            thread.start()
        try:
            self._wait_for(self.aio.start, seconds, "start")
        except BaseException:
            self._stop_loop(seconds)
            raise
        return self

    def _stop_loop(self, timeout: float | None) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def close(self, allow_reconnect: bool = False, *, timeout: float | None = 10.0) -> None:
        """Close every connection gracefully, stop listening and end the loop thread.

        With ``allow_reconnect=True`` clients reconnect (to a server started
        again at the same address). Waits about ``timeout`` seconds at most.
        """
        self._guard("close")
        if self._loop is None:
            return
        seconds = check_timeout(timeout)
        bound = None if seconds is None else 2 * seconds + 1.0  # connections, then the listener
        try:
            self._wait_for(lambda: self.aio.close(allow_reconnect, timeout=timeout), bound, "close")
        finally:
            self._stop_loop(seconds)

    def __enter__(self) -> IPCServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ operations

    def publish(self, topic: str, message: Any = None, *, timeout: float | None = 10.0) -> int:
        """Send ``message`` to every subscriber of ``topic``; returns how many got it."""
        if self._loop is None or self._on_loop_thread():
            return _run_now(self.aio.publish(topic, message))
        return self._wait_for(lambda: self.aio.publish(topic, message), timeout, "publish")

    def broadcast(self, data: Any, *, timeout: float | None = 10.0) -> int:
        """Send a message to every connection; returns how many got it."""
        if self._loop is None or self._on_loop_thread():
            return _run_now(self.aio.broadcast(data))
        return self._wait_for(lambda: self.aio.broadcast(data), timeout, "broadcast")

    def survey(
        self, data: Any, timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[tuple[IPCConnection, Any]]:
        """Request ``data`` from every connection: ``[(connection, reply or exception)]``."""
        seconds = check_timeout(timeout)
        bound = None if seconds is None else seconds + 1.0
        return self._wait_for(lambda: self.aio.survey(data, timeout), bound, "survey")

    def ping(
        self, data: Any = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[tuple[IPCConnection, Any]]:
        """Ping every connection: ``[(connection, seconds or exception)]``."""
        seconds = check_timeout(timeout)
        bound = None if seconds is None else seconds + 1.0
        return self._wait_for(lambda: self.aio.ping(data, timeout), bound, "ping")

    def run(self, awaitable: Awaitable[T], *, timeout: float | None = DEFAULT_TIMEOUT) -> T:
        """Run ``awaitable`` on the server's loop and return its result.

        For what lives on the loop, such as ``server.run(connection.request(data))``.
        """
        if (self._loop is None or self._on_loop_thread()) and inspect.iscoroutine(awaitable):
            awaitable.close()  # never to run: no "never awaited" warning
        return self._wait_for(lambda: awaitable, check_timeout(timeout), "run")

    def pause(self) -> None:
        """Stop reading from every connection."""
        self._call(self.aio.pause)

    def resume(self) -> None:
        """Start reading from every connection again."""
        self._call(self.aio.resume)

    @property
    def connections(self) -> list[IPCConnection]:
        """Live connections, in connect order (objects of the loop; see the class docs)."""
        return self._call(lambda: self.aio.connections)

    @property
    def topics(self) -> dict[str, list[IPCConnection]]:
        """Each topic with at least one subscriber, and its subscribers."""
        return self._call(lambda: self.aio.topics)

    @property
    def is_ready(self) -> bool:
        """Whether the server is listening."""
        return self.aio.is_ready

    @property
    def bound_address(self) -> str:
        """The address as bound (TCP: with the real port)."""
        return self.aio.bound_address

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with ``port=0``); None for Unix sockets."""
        return self.aio.port

    # ------------------------------------------------------------------ events

    def _listen(self, event: str, handler: F | None, *, once: bool) -> F | Callable[[F], F]:
        add = EventEmitter.once if once else EventEmitter.on  # the asyncio server's, untyped names
        if handler is None:

            def decorator(fn: F) -> F:
                return self._call(lambda: add(self.aio, event, fn))

            return decorator
        return self._call(lambda: add(self.aio, event, handler))

    if not TYPE_CHECKING:  # their types are ServerListeners', for the seven events

        def on(self, event, handler=None):
            """Add ``handler`` for ``event`` (runs on the loop thread); without one, a decorator."""
            return self._listen(event, handler, once=False)

        def once(self, event, handler=None):
            """Like ``on``, but the handler is removed after its first call."""
            return self._listen(event, handler, once=True)

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove ``handler`` from ``event`` (every handler of it if None)."""
        self._call(lambda: self.aio.off(event, handler))
