"""The event emitter: ordered listeners, plain or coroutine functions (docs/guide.md).

Listeners of one event run in the order they were added. A coroutine
listener is awaited before the next listener runs (the seed's ``emitAsync``).
Plain function listeners run inside ``emit()``. From the first coroutine
listener on, the chain runs in a task of its own, so handlers can use
``asyncio.timeout`` and everything else that needs a current task. On
Python 3.12+ that task starts eagerly: a handler that answers at once
(``await respond(x)``) finishes inside ``emit()`` without a loop iteration.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Final, TypeVar, cast, overload

from mypy_extensions import mypyc_attr

__all__ = [
    "DONE",
    "STOP",
    "EventEmitter",
    "IPCEvents",
    "Respond",
    "Stop",
    "Tasks",
    "Throttle",
    "all_done",
    "settle",
    "shorten",
    "start_task",
]

_EAGER = sys.version_info >= (3, 12)

logger = logging.getLogger("ipc_server.events")

LISTENER_ERRORS = (Exception, asyncio.CancelledError)
"""What a listener may raise and have reported on ``error``: anything but
``KeyboardInterrupt`` and ``SystemExit`` (a ``CancelledError`` raised by a
listener included; the cancellation of a chain's own task still cancels it)."""

F = TypeVar("F", bound=Callable[..., Any])


class Stop(enum.Enum):
    """Type of ``STOP``."""

    STOP = "STOP"

    def __repr__(self) -> str:
        return "STOP"


STOP = Stop.STOP
"""Return this from a listener to stop the rest of the chain (the seed's ``this.stopped = true``)."""


@mypyc_attr(native_class=False)  # its names stay plain class attributes
class IPCEvents:
    """Names of the built-in events, for code that prefers constants to strings.

    Published messages are emitted under their topic's own name.
    """

    # Final: type checkers read each as its literal, so on(IPCEvents.READY, f) is typed as on("ready", f).
    READY: Final = "ready"
    ERROR: Final = "error"
    CONNECT: Final = "connect"
    DISCONNECT: Final = "disconnect"
    CLOSE: Final = "close"
    STATUS: Final = "status"
    MESSAGE: Final = "message"
    REQUEST: Final = "request"


class _Done:
    """An awaitable that is already complete."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        # An empty iterator: awaiting it finishes at once, without making a generator.
        return cast(Generator[Any, None, None], iter(()))


DONE = _Done()
"""What ``respond(x)`` returns when the answer is queued and no wait is due.

A listener that returns it (``lambda request, respond, conn: respond(request)``)
counts as a plain function that returned: it costs no task.
"""


class Throttle:
    """How much one source (a connection, a client) may log: ``burst`` lines at once,
    then one per ``interval`` seconds, which tells how many were held back meanwhile."""

    __slots__ = ("_held", "_left", "_since", "burst", "interval")

    def __init__(self, burst: int = 5, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self._left = burst
        self._since = 0.0
        self._held = 0

    def allow(self) -> int | None:
        """None: hold this line back; else log it, and say how many were held before it."""
        now = time.monotonic()
        if self._left <= 0 and now - self._since >= self.interval:
            self._left = 1  # a new period: one more line, with the count of what was held
        if self._left <= 0:
            self._held += 1
            return None
        self._left -= 1
        self._since = now
        held, self._held = self._held, 0
        return held


def shorten(value: object, limit: int = 64) -> str:
    """``str(value)`` cut to ``limit`` characters, for log lines a peer can make long (ids)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _own_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` cancels the running task itself (rather than a listener raising one).

    Python 3.10 cannot tell the two apart: there, every ``CancelledError`` cancels.
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is None or bool(cancelling())


def all_done(
    futures: list[asyncio.Future[Any]], loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    """A future done once every one of ``futures`` is; waiting on it cancels none of them."""
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(futures)

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if not left and not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    if not futures:
        waiter.set_result(None)
    return waiter


def settle(futures: list[asyncio.Future[Any]], error: BaseException | None) -> None:
    """Resolve each future not done yet: with None, or with ``error``."""
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@mypyc_attr(native_class=False)  # a compiled class cannot subclass set
class Tasks(set["asyncio.Task[Any]"]):
    """The tasks of listener chains that suspended, kept until they end.

    With a ``limit``, ``on_full(True)`` is called when that many run, and
    ``on_full(False)`` once fewer do again (the owner stops and resumes reading).
    """

    __slots__ = ("full", "limit", "on_full")

    def __init__(
        self, limit: int | None = None, on_full: Callable[[bool], None] | None = None
    ) -> None:
        super().__init__()
        self.limit = limit
        self.on_full = on_full
        self.full = False

    def add(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` until it ends."""
        super().add(task)
        limit = self.limit
        if limit is not None and not self.full and len(self) >= limit:
            self.full = True
            if self.on_full is not None:
                self.on_full(True)

    def discard(self, task: object) -> None:
        """Forget ``task`` (its done callback)."""
        super().discard(task)
        if self.full and len(self) < (self.limit or 0):
            self.full = False
            if self.on_full is not None:
                self.on_full(False)


def start_task(
    coro: Coroutine[Any, Any, Any], tasks: Tasks | None = None
) -> asyncio.Task[Any] | None:
    """Run ``coro`` as a task; on Python 3.12+ it starts eagerly.

    An eager task runs synchronously up to its first real suspension, inside
    its own task (so ``asyncio.timeout`` and ``current_task()`` work in
    handlers), and costs no loop iteration when it finishes at once. Returns
    None when it already finished, else the task, kept in ``tasks`` until done
    so that it is not garbage-collected.
    """
    loop = asyncio.get_running_loop()
    if _EAGER:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        if task.done():
            task.result()  # re-raise what escaped, like an awaited coroutine would
            return None
    else:
        task = loop.create_task(coro)
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return task


@mypyc_attr(allow_interpreted_subclasses=True)
class Respond(abc.ABC):
    """The ``respond`` callable handed to ``request`` listeners.

    Call it once with the answer: ``await respond(value)`` in a coroutine
    listener, or ``respond(value)`` in a plain one (the awaitable it returns
    waits only while the connection is over its write high-water mark; in
    the blocking client it is already done). A second call raises
    ``RuntimeError``. If no listener answers, the requester gets ``None``.
    ``respond.stream(items)`` answers with many items instead (the asyncio
    ends: ``Responder.stream``).

    Attributes:
        done: Whether an answer was sent.
        deadline: When the requester gives up, on the clock of the loop that
            runs the handler (``loop.time()``; ``time.monotonic()`` in the
            blocking client), from the timeout it sent along (a peer of this
            library); None without one, for streams, and for Node requesters.
    """

    __slots__ = ("deadline", "done")

    def __init__(self) -> None:
        self.done = False
        self.deadline: float | None = None

    @abc.abstractmethod
    def __call__(self, data: Any = None) -> Awaitable[None]:
        """Answer the request with ``data``."""

    @abc.abstractmethod
    def fail(self, exc: BaseException) -> None:
        """Answer with an error: a listener raised ``exc`` (the requester gets ``RemoteError``)."""

    def stream(self, items: Iterable[Any]) -> Awaitable[None]:
        """Answer with the items of ``items``: here, collected into one list answer."""
        return self(list(items))

    def finish(self) -> None:
        """End of the listener chain: answer ``None`` if nobody answered (never a hang)."""
        if not self.done:
            self(None)

    def _track(self, task: asyncio.Task[Any], first: Awaitable[Any]) -> None:  # noqa: B027 - a hook
        """The listener chain suspended and goes on in ``task``, which awaits ``first`` (the
        listener's coroutine) once it starts: a peer may cancel it."""


@mypyc_attr(allow_interpreted_subclasses=True)
class EventEmitter:
    """Ordered listeners per event name; plain functions or coroutine functions."""

    _logger = logger
    """Where a listener's exception is logged when nobody listens to ``error``."""

    def __init__(self) -> None:
        # Copy-on-write: a list here is never changed in place, so emit() can
        # iterate it while listeners add or remove listeners.
        self._listeners: dict[str, list[tuple[Callable[..., Any], bool]]] = {}
        self._fns: dict[str, list[Callable[..., Any]]] = {}
        self._has_once: set[str] = set()
        # The listener of each event that has exactly one, added with on():
        # the per-message paths call it with _run_one, without a chain.
        self._solo: dict[str, Callable[..., Any]] = {}
        self._tasks = Tasks()

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
        """Like ``on``, but the handler is removed after its first call."""
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
        if len(listeners) == 1 and not listeners[0][1]:
            self._solo[event] = listeners[0][0]
        else:
            self._solo.pop(event, None)

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
        ``_listener_failed``), never raised here.
        """
        solo = self._solo.get(event)
        if solo is not None:  # the per-message path: one listener, no chain (_run_one inlined)
            try:
                result = solo(*args)
                if result is not None and result is not DONE and hasattr(result, "__await__"):
                    self._suspend_chain(event, solo, result, [], args, None, None)
            except LISTENER_ERRORS as exc:
                self._chain_error(event, exc, args, None)
            return True
        fns = self._fns.get(event)
        if fns is None:
            return False
        if event in self._has_once:
            self._take(event)
        self._run_chain(event, fns, args)
        return True

    def emit_request(
        self,
        event: str,
        args: tuple[Any, ...],
        respond: Respond,
        tasks: Tasks | None = None,
    ) -> None:
        """Run the listener chain of a request until one answers through ``respond``.

        With no listener, or none that answers, the requester gets ``None``.
        A listener's exception is reported on ``error`` and sent to the
        requester (``respond.fail``). A chain that suspends finishes in a task
        kept in ``tasks`` (default: the emitter's own), so that its owner can
        wait for it or cancel it.
        """
        solo = self._solo.get(event)
        if solo is not None:  # the per-request path: one listener, no chain (_run_chain inlined)
            try:
                result = solo(*args)
                if result is not None and result is not DONE and hasattr(result, "__await__"):
                    self._suspend_chain(event, solo, result, [], args, respond, tasks)
                    return
            except LISTENER_ERRORS as exc:
                self._chain_error(event, exc, args, respond)
            if not respond.done:
                respond.finish()
            return
        fns = self._fns.get(event)
        if fns is None:
            respond.finish()
            return
        if event in self._has_once:
            self._take(event)
        self._run_chain(event, fns, args, respond, tasks)

    def _run_chain(
        self,
        event: str,
        fns: list[Callable[..., Any]],
        args: tuple[Any, ...],
        responder: Respond | None = None,
        tasks: Tasks | None = None,
    ) -> None:
        """Run ``fns`` in order until one returns ``STOP``.

        A chain that suspends finishes in a task kept in ``tasks`` (default:
        the emitter's own set), so that its owner can wait for it.

        With a ``responder`` (a ``request`` chain) the chain also stops once
        it answered; a listener's exception is also sent to the requester
        (``responder.fail``); and ``responder.finish()`` runs when the chain
        is over, however it ended, so that the requester always gets an answer.
        """
        index = 0
        for fn in fns:
            index += 1
            try:
                result = fn(*args)
                if result is None or result is DONE:  # a plain function that returned
                    if responder is not None and responder.done:
                        break
                    continue
                if hasattr(result, "__await__"):
                    self._suspend_chain(event, fn, result, fns[index:], args, responder, tasks)
                    return
            except LISTENER_ERRORS as exc:
                self._chain_error(event, exc, args, responder)
                result = None
            if result is STOP or (responder is not None and responder.done):
                break
        if responder is not None and not responder.done:
            responder.finish()

    def _run_one(self, event: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """``_run_chain`` for an event with one listener and no responder (the per-message path)."""
        try:
            result = fn(*args)
            if result is not None and result is not DONE and hasattr(result, "__await__"):
                self._suspend_chain(event, fn, result, [], args, None, None)
        except LISTENER_ERRORS as exc:
            self._chain_error(event, exc, args, None)

    def _suspend_chain(
        self,
        event: str,
        fn: Callable[..., Any],
        awaitable: Awaitable[Any],
        rest: list[Callable[..., Any]],
        args: tuple[Any, ...],
        responder: Respond | None,
        tasks: Tasks | None,
    ) -> None:
        """A coroutine listener: it and the ``rest`` of the chain run in a task of their own.

        The task starts eagerly on 3.12+, so a listener that does not suspend
        costs no extra loop iteration.
        """
        if not _loop_running():
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            raise RuntimeError(f"{event!r} listener {fn!r} needs a running event loop")
        coro = self._finish_chain(event, awaitable, rest, args, responder)
        task = start_task(coro, self._tasks if tasks is None else tasks)
        if task is not None and responder is not None:
            responder._track(task, awaitable)

    async def _finish_chain(
        self,
        event: str,
        first: Awaitable[Any],
        rest: list[Callable[..., Any]],
        args: tuple[Any, ...],
        responder: Respond | None,
    ) -> None:
        try:
            try:
                result = await first
            except LISTENER_ERRORS as exc:
                if _own_cancellation(exc):
                    raise
                self._chain_error(event, exc, args, responder)
                result = None
            if result is STOP or (responder is not None and responder.done):
                return
            for fn in rest:
                try:
                    result = fn(*args)
                    if hasattr(result, "__await__"):
                        result = await result
                except LISTENER_ERRORS as exc:
                    if _own_cancellation(exc):
                        raise
                    self._chain_error(event, exc, args, responder)
                    result = None
                if result is STOP or (responder is not None and responder.done):
                    return
        finally:
            if responder is not None:
                responder.finish()

    def _chain_error(
        self, event: str, exc: BaseException, args: tuple[Any, ...], responder: Respond | None
    ) -> None:
        self._listener_failed(event, exc, args)
        if responder is not None:
            responder.fail(exc)

    def _listener_failed(self, event: str, exc: BaseException, args: tuple[Any, ...] = ()) -> None:
        """A listener of ``event`` (called with ``args``) raised: report it on ``error``, or log it."""
        if event == "error" or not self.emit("error", exc):
            self._logger.error(
                "a %r listener raised %s: %s",
                event,
                type(exc).__name__,
                shorten(exc, 500),
                exc_info=exc,
            )
