"""The event emitter: ordered listeners, plain or coroutine functions (SPEC section 5).

Listeners of one event run in the order they were added. A coroutine
listener is awaited before the next listener runs (the seed's ``emitAsync``).
The chain is started *eagerly*: it runs synchronously inside ``emit()`` until
a listener really suspends, and only then continues in a task. So a handler
that answers at once (``await respond(x)``) costs no task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any, Protocol, TypeVar, overload

__all__ = ["STOP", "EventEmitter", "IPCEvents", "Stop", "run_eagerly"]

logger = logging.getLogger("ipc_server")

F = TypeVar("F", bound=Callable[..., Any])


class Stop(enum.Enum):
    """Type of :data:`STOP`."""

    STOP = "STOP"

    def __repr__(self) -> str:
        return "STOP"


STOP = Stop.STOP
"""Return this from a listener to stop the rest of the chain (the seed's ``this.stopped = true``)."""


class IPCEvents:
    """Names of the built-in events, for code that prefers constants to strings.

    Published messages are emitted under their topic's own name.
    """

    READY = "ready"
    ERROR = "error"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    CLOSE = "close"
    STATUS = "status"
    MESSAGE = "message"
    REQUEST = "request"


class _Continue:
    """Drives the rest of a coroutine that already ran up to its first suspension.

    Awaiting it yields the future the coroutine is blocked on to the running
    task, then keeps stepping the coroutine, forwarding whatever the task
    throws in (cancellation) — the same thing ``asyncio``'s eager tasks do.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, None, Any]:
        coro = self.coro
        pending = self.first
        self.first = None
        while True:
            try:
                yield pending
            except BaseException as exc:  # forward cancellation and the like
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return stop.value


async def _resume(cont: _Continue) -> Any:
    return await cont


def run_eagerly(
    coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task[Any]] | None = None
) -> asyncio.Task[Any] | None:
    """Run ``coro`` now, up to its first real suspension; finish it in a task.

    Returns ``None`` when it finished without suspending (exceptions it
    raised propagate), else the task finishing it. The task is added to
    ``tasks`` (and removed when done) so that it is not garbage-collected.
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.get_running_loop().create_task(_resume(_Continue(coro, first)))
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return task


class Answer(Protocol):
    """What a ``request`` chain answers through (the ``respond`` callable)."""

    done: bool

    def fail(self, exc: BaseException) -> None: ...

    def finish(self) -> None: ...


class EventEmitter:
    """Ordered listeners per event name; plain functions or coroutine functions."""

    def __init__(self) -> None:
        # Copy-on-write: a list here is never changed in place, so emit() can
        # iterate it while listeners add or remove listeners.
        self._listeners: dict[str, list[tuple[Callable[..., Any], bool]]] = {}
        self._fns: dict[str, list[Callable[..., Any]]] = {}
        self._has_once: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @overload
    def on(self, event: str) -> Callable[[F], F]: ...
    @overload
    def on(self, event: str, handler: F) -> F: ...
    def on(self, event: str, handler: F | None = None) -> F | Callable[[F], F]:
        """Add ``handler`` for ``event``; without a handler, return a decorator."""
        return self._add(event, handler, once=False)

    @overload
    def once(self, event: str) -> Callable[[F], F]: ...
    @overload
    def once(self, event: str, handler: F) -> F: ...
    def once(self, event: str, handler: F | None = None) -> F | Callable[[F], F]:
        """Like :meth:`on`, but the handler is removed after its first call."""
        return self._add(event, handler, once=True)

    def _add(self, event: str, handler: F | None, *, once: bool) -> F | Callable[[F], F]:
        if not isinstance(event, str):
            raise TypeError(f"event name must be a str, not {type(event).__name__}")
        if handler is None:

            def decorator(fn: F) -> F:
                self._add(event, fn, once=once)
                return fn

            return decorator
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self._set(event, [*self._listeners.get(event, ()), (handler, once)])
        return handler

    def _set(self, event: str, listeners: list[tuple[Callable[..., Any], bool]]) -> None:
        if listeners:
            self._listeners[event] = listeners
            self._fns[event] = [fn for fn, _ in listeners]
            if any(once for _, once in listeners):
                self._has_once.add(event)
            else:
                self._has_once.discard(event)
        else:
            self._listeners.pop(event, None)
            self._fns.pop(event, None)
            self._has_once.discard(event)

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove ``handler`` from ``event`` (every handler of it if None)."""
        if handler is None:
            self._set(event, [])
            return
        listeners = list(self._listeners.get(event, ()))
        for i, (fn, _) in enumerate(listeners):
            if fn == handler:
                del listeners[i]
                self._set(event, listeners)
                break

    def listener_count(self, event: str) -> int:
        """How many listeners ``event`` has."""
        return len(self._fns.get(event, ()))

    def _take(self, event: str) -> list[Callable[..., Any]] | None:
        """The listeners to call for one emit (``once`` ones are removed now)."""
        fns = self._fns.get(event)
        if fns is not None and event in self._has_once:
            self._set(event, [item for item in self._listeners[event] if not item[1]])
        return fns

    def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of ``event`` with ``args``; True if there were any.

        Exceptions from listeners are reported on the ``error`` event (see
        :meth:`_listener_failed`), never raised here.
        """
        fns = self._fns.get(event)
        if fns is None:
            return False
        if event in self._has_once:
            self._take(event)
        self._run_chain(event, fns, args)
        return True

    def _run_chain(
        self,
        event: str,
        fns: list[Callable[..., Any]],
        args: tuple[Any, ...],
        responder: Answer | None = None,
        tasks: set[asyncio.Task[Any]] | None = None,
    ) -> None:
        """Run ``fns`` in order until one returns ``STOP``.

        A chain that suspends finishes in a task kept in ``tasks`` (default:
        the emitter's own set), so that its owner can wait for it.

        With a ``responder`` (a ``request`` chain) the chain also stops once
        it answered; a listener's exception is also sent to the requester
        (``responder.fail``); and ``responder.finish()`` runs when the chain
        is over, however it ended, so that the requester always gets an answer.
        """
        for index, fn in enumerate(fns):
            try:
                result = fn(*args)
                if result is None:  # the common case: a plain function that returned
                    if responder is not None and responder.done:
                        break
                    continue
                if type(result) is CoroutineType:
                    # Step the listener's coroutine here; most finish at once
                    # (``await respond(x)``) and need no task at all.
                    try:
                        suspended = result.send(None)
                    except StopIteration as stop:
                        result = stop.value
                    else:
                        first = _Continue(result, suspended)
                        coro = self._finish_chain(event, first, fns[index + 1 :], args, responder)
                        run_eagerly(coro, self._tasks if tasks is None else tasks)
                        return
                elif hasattr(result, "__await__"):
                    coro = self._finish_chain(event, result, fns[index + 1 :], args, responder)
                    run_eagerly(coro, self._tasks if tasks is None else tasks)
                    return
            except Exception as exc:
                self._chain_error(event, exc, args, responder)
                result = None
            if result is STOP or (responder is not None and responder.done):
                break
        if responder is not None:
            responder.finish()

    async def _finish_chain(
        self,
        event: str,
        first: Awaitable[Any],
        rest: list[Callable[..., Any]],
        args: tuple[Any, ...],
        responder: Answer | None,
    ) -> None:
        try:
            try:
                result = await first
            except Exception as exc:
                self._chain_error(event, exc, args, responder)
                result = None
            if result is STOP or (responder is not None and responder.done):
                return
            for fn in rest:
                try:
                    result = fn(*args)
                    if hasattr(result, "__await__"):
                        result = await result
                except Exception as exc:
                    self._chain_error(event, exc, args, responder)
                    result = None
                if result is STOP or (responder is not None and responder.done):
                    return
        finally:
            if responder is not None:
                responder.finish()

    def _chain_error(
        self, event: str, exc: BaseException, args: tuple[Any, ...], responder: Answer | None
    ) -> None:
        self._listener_failed(event, exc, args)
        if responder is not None:
            responder.fail(exc)

    def _listener_failed(self, event: str, exc: BaseException, args: tuple[Any, ...] = ()) -> None:
        """A listener of ``event`` (called with ``args``) raised: report it on ``error``, or log it."""
        if event == "error" or not self.emit("error", exc):
            logger.error("unhandled exception in %r listener", event, exc_info=exc)
