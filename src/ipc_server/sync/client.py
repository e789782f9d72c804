"""The blocking ``IPCClient``: connecting, waiting and reconnecting with threads.

The rules (options, statuses, what a loss leads to, the topics registry)
are ``clientcore.ClientCore``'s; the socket is a ``connection.Connection``,
read by whichever thread waits (``reader``). This module adds what only the
blocking front does: its locks, the background reader and listener threads,
and a reconnect thread.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..clientcore import ClientCore, IPCClientStatus, connect_error
from ..errors import ConnectionClosedError, IPCError, ProtocolError, RequestTimeoutError
from ..events import Respond
from ..listeners import BlockingClientEvents
from ..options import DEFAULT, DEFAULT_CLOSE_TIMEOUT, DEFAULT_TIMEOUT, Default, check_timeout
from ..packets import (
    MESSAGE,
    PING,
    REQUEST,
    RESPONSE,
    STATS,
    subscribe_request,
    succeeded,
    unsubscribe_request,
)
from ..subscriptions import SubscriptionBase
from ..transport import dial, socket_credentials
from .connection import GONE, Connection, SendTimeout, SyncRespond, handshake
from .reader import Background, background
from .server import check_not_serving, serving_threads

__all__ = ["IPCClient", "IPCClientStatus", "Subscription"]

logger = logging.getLogger("ipc_server.sync")

F = TypeVar("F", bound=Callable[..., Any])

_LIFECYCLE_EVENTS = frozenset({"ready", "error", "close", "status"})
"""Events the client emits itself; any other listener wants packets pushed by the server."""

_monotonic = time.monotonic


class _Listeners:
    """The one library thread that runs a client's listeners, in order.

    Started on the first event; ended (after the events queued before) by
    ``stop``. A fresh thread and queue serve the next connect.
    """

    def __init__(self, client: IPCClient, on_full: Callable[[object, bool], None]) -> None:
        self._client = client
        self._on_full = on_full  # ClientCore._events_full: max_pending_events reached, or no longer
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...], Respond | None] | None] | None
        self._queue = None
        self.waiting = 0  # events queued, not yet run (bounded by max_pending_events)

    def put(self, event: str, args: tuple[Any, ...], respond: Respond | None = None) -> None:
        with self._lock:
            q = self._queue
            if q is None:
                q = self._queue = queue.SimpleQueue()
                threading.Thread(
                    target=self._run, args=(q,), name="ipc_server listeners", daemon=True
                ).start()
            q.put((event, args, respond))
            self.waiting += 1
            full = self.waiting == self._client.max_pending_events
        if full:
            self._on_full(self, True)

    def _taken(self) -> None:
        with self._lock:
            self.waiting -= 1
            drained = self.waiting == self._client.max_pending_events - 1
        if drained:
            self._on_full(self, False)

    def stop(self) -> None:
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)
                self._queue = None

    def _run(
        self, q: queue.SimpleQueue[tuple[str, tuple[Any, ...], Respond | None] | None]
    ) -> None:
        client = self._client
        while True:
            item = q.get()
            if item is None:
                return
            event, args, respond = item
            try:
                if respond is None:
                    client.emit(event, *args)
                else:
                    client.emit_request(event, args, respond)
            except Exception:  # pragma: no cover - the chain reports listener errors itself
                logger.exception("failure running %r listeners", event)
            self._taken()


class Subscription(SubscriptionBase):
    """Messages of one topic as a blocking iterator (see ``IPCClient.subscription``).

    ``for message in sub`` waits for each message and ends when the client
    closes for good; ``get`` waits at most ``timeout`` seconds.
    """

    def __init__(self, client: IPCClient, topic: str, maxsize: int = 0) -> None:
        super().__init__(client, topic, maxsize)
        self._cond = threading.Condition(threading.Lock())

    def _put(self, message: Any) -> None:
        with self._cond:
            super()._put(message)

    def _end(self) -> None:
        with self._cond:
            super()._end()

    def _wake(self) -> None:
        self._cond.notify()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Any:
        more, message = self._next(None)
        if not more:
            raise StopIteration
        return message

    def _next(self, timeout: float | None) -> tuple[bool, Any]:
        item = self._wait(timeout)
        if item[0]:
            self._took()  # outside the lock: it may wake the reader
        return item

    def _wait(self, timeout: float | None) -> tuple[bool, Any]:
        deadline = None if timeout is None else _monotonic() + timeout
        with self._cond:
            while True:
                item = self._box.take()
                if item is not None:
                    if not item[0]:
                        self._cond.notify()  # another consumer sees the end too
                    return item
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no message on {self.topic!r} within {timeout:g} s")
                    self._cond.wait(remaining)

    def get(self, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """The next message.

        Raises:
            TimeoutError: None within ``timeout`` seconds (0/None: wait forever).
            ConnectionClosedError: The client closed for good.
        """
        more, message = self._next(check_timeout(timeout))
        if not more:
            raise ConnectionClosedError("client closed")
        return message


class IPCClient(ClientCore, BlockingClientEvents):
    """A blocking IPC client; thread-safe: any number of threads may call it at once.

    Events (listeners are plain functions; they run on one library thread):
    ``ready(info)``, ``error(error)``, ``close(reason)`` (closed for good),
    ``status(status)``, ``message(message)``, ``request(request, respond)``,
    and one event per subscribed topic (``handler(message)``).

    The keyword options are those of
    [`ClientOptions`][ipc_server.options.ClientOptions], as for the asyncio client (which alone has ``max_queued``: this one
    writes directly and queues nothing). Windows named pipes are not
    supported by the blocking client; TCP and TLS are.
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        # The client's lock: reader roles, request tables, recv + dispatch, status. Held briefly.
        self._lock = threading.Lock()
        self._ready_cond = threading.Condition(threading.Lock())  # READY or closed for good
        self._elock = threading.Lock()  # listener lists
        self._push = False  # some listener wants what the server pushes
        self._conn: Connection | None = None
        self._bg: Background | None = None
        self._stop = threading.Event()  # set when closed: ends reconnect sleeps
        self._listeners_thread = _Listeners(self, self._events_full)
        self._events_held = False  # max_pending_events wait: the background reader pauses
        self._slock = threading.Lock()  # the topics registry

    # ------------------------------------------------------------------ listeners

    def _add(self, event: str, handler: F | None, *, once: bool) -> F | Callable[[F], F]:
        if handler is None:
            return super()._add(event, None, once=once)  # the decorator comes back here
        if inspect.iscoroutinefunction(handler):
            raise TypeError(
                "the blocking IPCClient runs plain functions as listeners; "
                "use ipc_server.IPCClient (asyncio) for coroutine listeners"
            )
        with self._elock:
            return super()._add(event, handler, once=once)

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        """Remove ``handler`` from ``event`` (every handler of it if None)."""
        with self._elock:
            super().off(event, handler)

    def _take(self, event: str) -> list[Callable[..., Any]] | None:
        with self._elock:
            return super()._take(event)

    def _set(self, event: str, listeners: list[tuple[Callable[..., Any], bool]]) -> None:
        super()._set(event, listeners)
        self._push = any(e not in _LIFECYCLE_EVENTS for e in self._fns)

    def _reads_held(self) -> bool:
        return self._events_held

    def _push_wanted(self) -> bool:
        registry = self._registry
        return self._push or bool(registry.confirmed) or bool(registry.streams)

    # ------------------------------------------------------------------ ClientCore's hooks

    def _emit(self, event: str, *args: Any) -> bool:
        if event not in self._fns:
            return False
        self._listeners_thread.put(event, args)
        return True

    def _wake_waiters(self, error: BaseException | None) -> None:
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _connection_stats(self) -> dict[str, Any] | None:
        conn = self._conn
        return None if conn is None or conn.dead else conn.stats()

    def _events_waiting(self) -> int:
        return self._listeners_thread.waiting

    def _hold_events(self, hold: bool) -> None:
        # True comes from the reading thread (client lock held); False from a consumer.
        self._events_held = hold
        if not hold:
            with self._lock:
                bg = self._bg
                if bg is not None:
                    bg.signal()

    def _finish(self, reason: Any) -> None:
        super()._finish(reason)
        self._stop.set()
        bg = self._bg
        if bg is not None:
            self._bg = None
            bg.stop = True
            bg.signal()
        self._listeners_thread.stop()

    def _set_status_unless(self, stop: threading.Event, status: IPCClientStatus) -> None:
        """Set ``status`` unless the client closed meanwhile (its status is then IDLE for good)."""
        with self._lock:
            if not stop.is_set():
                self._set_status(status)

    # ------------------------------------------------------------------ what the connection tells

    def _request_arrived(self, conn: Connection, data: Any, nonce: str) -> None:
        if "request" in self._fns:
            respond = SyncRespond(conn, nonce)
            self._listeners_thread.put("request", (data, respond), respond)
        else:
            conn.answer_later(RESPONSE, None, nonce)  # nobody listens: None, never a hang

    def _connection_lost(self, conn: Connection, reason: Any) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        reconnect, reason = self._after_loss(conn.peer_end, reason, conn.destroyed or conn.closing)
        if not reconnect:
            self._finish(reason)
            return
        threading.Thread(
            target=self._reconnect,
            args=(reason, self._stop),
            name="ipc_server reconnect",
            daemon=True,
        ).start()

    # ------------------------------------------------------------------ connecting

    def connect(
        self, payload: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> IPCClient:
        """Connect and run the CONNECTION exchange; ``payload`` reaches the server's ``connect``.

        One attempt, bounded by ``timeout`` (default: ``connect_timeout``);
        reconnects happen only after a connection was established.

        Raises:
            HandshakeError: The server refused the client or answered with something else.
            TimeoutError: Not connected within the timeout.
            OSError: No server there (``ConnectionRefusedError``, ``FileNotFoundError``).
        """
        check_not_serving(self.address, "connect")
        limit = check_timeout(self.connect_timeout if timeout is DEFAULT else timeout)
        with self._lock:
            self._begin_connect(payload)
            self._stop = threading.Event()
        try:
            self._open(limit, self._stop)
        except BaseException:
            with self._lock:
                self._connect_failed()
            raise
        return self

    def _open(self, limit: float | None, stop: threading.Event) -> None:
        try:
            self._try_open(limit, stop)
        except (OSError, ProtocolError) as exc:
            error = connect_error(self.address, exc, limit)
            if error is exc:
                raise
            raise error from exc

    def _try_open(self, limit: float | None, stop: threading.Event) -> None:
        self._set_status_unless(stop, IPCClientStatus.CONNECTING)
        deadline = None if limit is None else _monotonic() + limit
        sock = dial(self.address, ssl=self.ssl, timeout=limit)
        upgrade = (self.address.host or self.upgrade_token, self.upgrade_token)
        try:
            self._check_server(socket_credentials(sock))  # before a byte is sent
            self._set_status_unless(stop, IPCClientStatus.CONNECTED)
            opened = handshake(
                sock,
                self._hello(),
                deadline,
                upgrade=upgrade if self.handshake else None,
                max_message_size=self.max_message_size,
                max_packet_objects=self.max_packet_objects,
            )
        except BaseException:
            sock.close()
            raise
        lock = self._lock
        with lock:
            if stop.is_set():
                sock.close()
                raise ConnectionClosedError("client closed while connecting")
            conn = Connection(
                sock,
                opened,
                lock,
                on_message=self._message_arrived,
                on_request=self._request_arrived,
                on_lost=self._connection_lost,
                report=self._report,
            )
            self._conn = conn
            restore = self._admitted(opened.agreement)
            for body in opened.early:
                conn.dispatch_body(body)
            bg = self._bg
            if bg is None:
                bg = self._bg = Background()
                threading.Thread(
                    target=background,
                    args=(bg, lock, lambda: self._conn, self._push_wanted, self._reads_held),
                    name="ipc_server reader",
                    daemon=True,
                ).start()
            else:
                bg.signal()
        conn.flush_outbox()
        for data, fields in restore:
            # After a reconnect: subscriptions and services are back before anyone hears "ready".
            try:
                nonce = str(next(self._nonces))
                conn.call(REQUEST, data, nonce, deadline, limit, fields)
            except IPCError as exc:
                self._report(exc)
                if isinstance(exc, ConnectionClosedError):
                    break
        with lock:
            if conn.dead:
                return  # lost again: its loss has been dealt with (reconnecting or closed)
            self._ready()

    def _reconnect(self, reason: Any, stop: threading.Event) -> None:
        last: Any = reason
        with self._lock:
            delays = self._retry_delays()
        while True:
            with self._lock:
                delay = None if stop.is_set() else next(delays, None)
            if delay is None or stop.wait(delay):
                break
            try:
                self._open(check_timeout(self.connect_timeout), stop)
            except Exception as exc:  # OSError, TimeoutError, IPCError, ...
                last = exc
                with self._lock:
                    if not stop.is_set() and self._attempt_failed(exc):
                        continue
                break
            return
        with self._lock:
            if not stop.is_set():
                self._finish(last)

    def _live(self, deadline: float | None) -> Connection:
        """The live connection, waiting (bounded) while a reconnect is under way."""
        conn = self._conn
        if conn is not None and self.status is IPCClientStatus.READY:
            return conn
        with self._ready_cond:
            while True:
                conn = self._conn
                if conn is not None and self.status is IPCClientStatus.READY:
                    return conn
                if self._closed:
                    raise self._closed_error()
                if deadline is None:
                    self._ready_cond.wait()
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise RequestTimeoutError(0.0, "waiting for the reconnect")
                    self._ready_cond.wait(remaining)

    # ------------------------------------------------------------------ operations

    def _begin(self, deadline: float | None, what: str) -> Connection:
        """The connection to use now (checking first that this thread may block on it)."""
        check_not_serving(self.address, what)
        return self._live(deadline)

    def _call(self, t: int, data: Any, timeout: float | Default | None, what: str) -> Any:
        if timeout is DEFAULT:
            timeout = self.request_timeout
        # The common case (a positive float) skips check_timeout's checks.
        limit = timeout if type(timeout) is float and timeout > 0 else check_timeout(timeout)
        deadline = None if limit is None else _monotonic() + limit
        conn = self._conn
        if conn is None or self.status is not IPCClientStatus.READY or serving_threads():
            conn = self._begin(deadline, what)
        nonce = str(next(self._nonces))
        while True:
            value = conn.call(t, data, nonce, deadline, limit)
            if value is not GONE:
                return value
            try:
                conn = self._live(deadline)  # not sent, or not run: wait for the reconnect
            except ConnectionClosedError as exc:
                raise ConnectionClosedError(
                    exc.reason, allow_reconnect=exc.allow_reconnect, executed=False
                ) from None

    def request(self, data: Any, timeout: float | Default | None = DEFAULT) -> Any:
        """Send a request and return the server's answer.

        ``timeout`` in seconds (default: ``request_timeout``, 10 s; 0/None: forever).

        Raises:
            RequestTimeoutError: No answer in time.
            ConnectionClosedError: The connection closed before the answer came.
            RemoteError: The server's handler raised.
        """
        return self._call(REQUEST, data, timeout, "request")

    def ping(self, data: Any = None, timeout: float | Default | None = DEFAULT) -> float:
        """Round trip to the server in seconds (the server echoes ``data``)."""
        latency: float = self._call(PING, data, timeout, "ping")
        return latency

    def send(self, data: Any, *, timeout: float | Default | None = DEFAULT) -> None:
        """Send a one-way message (the server's ``message`` event).

        Blocks only while the socket's buffer is full (or reconnecting), at
        most ``timeout`` seconds (default: ``request_timeout``).
        """
        limit = check_timeout(self.request_timeout if timeout is DEFAULT else timeout)
        deadline = None if limit is None else _monotonic() + limit
        conn = self._begin(deadline, "send")
        if conn.dead or conn.closing:
            raise conn.lost_exc or ConnectionClosedError("connection is closing")
        try:
            conn.transmit(MESSAGE, data, None, deadline)
        except SendTimeout:
            raise RequestTimeoutError(limit or 0.0, "send") from None

    def server_stats(
        self, *, connections: bool = False, timeout: float | Default | None = DEFAULT
    ) -> dict[str, Any]:
        """The server's ``stats()``, as ``ipc_server.IPCClient.server_stats`` (blocking)."""
        if timeout is DEFAULT:
            timeout = self.request_timeout
        limit = check_timeout(timeout)
        deadline = None if limit is None else _monotonic() + limit
        conn = self._begin(deadline, "server_stats")
        if STATS not in conn.features:
            raise self._stats_unsupported()
        nonce = str(next(self._nonces))
        value = conn.call(REQUEST, connections, nonce, deadline, limit, {"x": STATS})
        if value is GONE:
            raise ConnectionClosedError("connection lost before the stats request left")
        result: dict[str, Any] = value
        return result

    # ------------------------------------------------------------------ pub/sub

    def subscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = None,
        timeout: float | Default | None = DEFAULT,
    ) -> bool:
        """Subscribe to a topic or pattern (or several), as ``ipc_server.IPCClient.subscribe``."""
        reply = self.request(self._subscribe_request(topic, group), timeout)
        with self._slock:
            return self._subscribe_done(topic, reply, group=group)

    def unsubscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = None,
        timeout: float | Default | None = DEFAULT,
    ) -> bool:
        """Unsubscribe (from ``group``'s subscription, if given); False when it was not subscribed."""
        with self._slock:
            request = self._unsubscribe_request(topic, group)
        return succeeded(self.request(request, timeout))

    def publish(
        self, topic: str, message: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Publish ``message`` to every subscriber of ``topic`` (through the server)."""
        return succeeded(self.request(self._publish_request(topic, message), timeout))

    @contextlib.contextmanager
    def subscription(
        self, topic: str, *, maxsize: int = 0, timeout: float | Default | None = DEFAULT
    ) -> Iterator[Subscription]:
        """A blocking iterator of the topic's messages, as ``ipc_server.IPCClient.subscription``.

        Subscribed on entry and, unless the topic is still wanted elsewhere,
        unsubscribed on exit; ``maxsize`` and ``timeout`` mean the same.
        """
        sub = Subscription(self, self._subscription_topic(topic), maxsize)
        registry = self._registry
        try:
            with self._slock:
                needed = registry.open(sub)
            if needed:
                reply = self.request(subscribe_request(topic), timeout)
                with self._slock:
                    ok = self._subscribe_done(topic, reply, explicit=False)
                if not ok:
                    raise IPCError(f"server refused the subscription to {topic!r}")
            yield sub
        finally:
            with self._slock:
                last = registry.close(sub)
            if last and self.is_ready:
                with contextlib.suppress(IPCError):
                    self.request(unsubscribe_request(topic), timeout)

    # ------------------------------------------------------------------ closing

    def close(self, reason: Any = None, *, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> bool:
        """Close gracefully: pending requests answered first, then END, then the socket.

        Waits at most ``timeout`` seconds, then drops the connection. Emits
        ``close(reason)``. Returns False if it was not connected.
        """
        check_not_serving(self.address, "close")
        limit = check_timeout(timeout)
        deadline = None if limit is None else _monotonic() + limit
        with self._lock:
            if not self._begin_close():
                return False
            self._stop.set()  # ends a reconnect under way
            conn = self._conn
            if conn is not None and not conn.dead:
                conn.closing = True
                conn.close_reason = reason
            else:
                conn = None
        if conn is not None:
            conn.close_gracefully(reason, deadline)
        with self._lock:
            self._finish(reason)
        return True

    def destroy(self, reason: Any = None) -> bool:
        """Close at once: pending requests fail with ConnectionDestroyedError; emits ``close``.

        Also ends a ``close()`` under way. Returns False once closed for good.
        """
        with self._lock:
            if not self._begin_destroy():
                return False
            self._stop.set()
            conn = self._conn
            if conn is not None and not conn.dead:
                conn.destroyed = True
                if conn.close_reason is None:
                    conn.close_reason = reason
                conn.lose(None)
            self._finish(reason)
        return True

    def __enter__(self) -> IPCClient:
        if self._closed and self.status is IPCClientStatus.IDLE:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
