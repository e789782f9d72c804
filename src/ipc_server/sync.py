"""The blocking API: ``IPCClient`` and ``IPCServer`` for code without asyncio.

Same names as the asyncio API, each call blocking, each with ``timeout=``
(seconds; ``0`` or ``None`` wait forever)::

    from ipc_server.sync import IPCClient

    with IPCClient(path="myapp") as client:
        reply = client.request({"cmd": "say"}, timeout=5)

**IPCClient** has no event loop. It drives the sans-I/O core
(``ipc_server.protocol.FrameDecoder``, ``ipc_server.codecs.PacketCodec``)
over a non-blocking socket, so a request costs what ``multiprocessing.connection``
costs: one ``send``, one ``poll``, one ``recv``, on the calling thread. Reading
follows the leader/follower pattern:

- A thread waiting for an answer reads the socket itself when nobody else
  does (it is the *reader*), and hands every packet it reads to whom it
  belongs: answers to the threads waiting for them, messages and requests
  from the server to the listener thread.
- Other waiting threads sleep on their own lock until their answer is handed
  to them, or until they are promoted to reader.
- A background thread reads when nobody waits, once the connection has been
  idle for a moment (1 ms when something listens to what the server pushes,
  5 ms otherwise): an idle client still gets pushed messages at once, answers
  the server's pings and notices a close, while back-to-back calls never pay
  for a thread hop. A caller takes the reader role back from it without waiting.

Listeners (``on``/``once``/``off``: plain functions only) run one at a time on
one library thread per client, never on the reading path, so a slow listener
does not delay answers to other threads. Blocking calls may be made from a
listener.

**IPCServer** (defined in ``ipc_server.syncserver``) is a thin wrapper over the asyncio
``ipc_server.server.IPCServer``, run on a private event loop thread.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import queue
import select
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from .address import Address
from .client import RESERVED_EVENTS, IPCClientStatus
from .clientcore import (
    DEFAULT,
    Default,
    backoff,
    client_address,
    connection_packet,
    end_data,
    published_topic,
    read_agreement,
    request_publish,
    request_subscribe,
    request_unsubscribe,
    succeeded,
    topic_list,
)
from .codecs import CodecName, PacketCodec
from .endpoint import (
    CONNECTION,
    DEFAULT_TIMEOUT,
    END,
    MESSAGE,
    PING,
    PONG,
    REQUEST,
    RESPONSE,
    deadline_of,
    error_answer,
    loss,
    remote_error,
)
from .errors import (
    ConnectionClosedError,
    HandshakeError,
    IPCError,
    MessageTooLargeError,
    ProtocolError,
    RequestTimeoutError,
)
from .events import EventEmitter
from .protocol import (
    BINARY_PREAMBLE,
    DEFAULT_MAX_MESSAGE_SIZE,
    Body,
    ClientPreamble,
    FrameDecoder,
    upgrade_request,
)
from .syncserver import _LOOP_OWNERS, IPCServer, _check_not_serving

__all__ = ["IPCClient", "IPCClientStatus", "IPCServer", "Subscription"]

logger = logging.getLogger("ipc_server")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_RECV_SIZE = 65536  # below malloc's mmap threshold: a fresh buffer per recv stays cheap
_IDLE_GRACE = 0.005
"""Seconds a connection must be idle before the background thread takes over reading.

Back-to-back calls thus never pay for a thread hop (a caller reads its own
answers); an idle client's background thread is already polling, so what the
server pushes then arrives at once."""

_PUSH_GRACE = 0.001
"""The same, while something listens to what the server pushes (messages,
requests, topics): pushed packets wait at most this long at the end of a burst."""

_LIFECYCLE_EVENTS = frozenset({"ready", "error", "close", "status"})
"""Events the client emits itself; any other listener wants packets pushed by the server."""

_SEND_TIMEOUT = DEFAULT_TIMEOUT
"""Bound on writing the client's own answers (PONG, RESPONSE) to a server that does not read."""


_monotonic = time.monotonic
_get_ident = threading.get_ident


# ---------------------------------------------------------------------- waiting on a socket


def _poller(sock: socket.socket, write: bool) -> Callable[[float | None], bool]:
    """A function ``wait(timeout) -> ready`` for one socket and one direction.

    Each reader role (calling threads, the background thread, the writer) has
    its own: a ``select.poll`` object must not be polled by two threads at once.
    """
    if hasattr(select, "poll"):
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
        wait = poll.poll

        def poll_wait(timeout: float | None) -> bool:
            return bool(wait(None if timeout is None else timeout * 1000.0))

        return poll_wait

    def select_wait(timeout: float | None) -> bool:  # pragma: no cover - Windows
        if write:
            return bool(select.select([], [sock], [sock], timeout)[1])
        return bool(select.select([sock], [], [sock], timeout)[0])

    return select_wait


class _Waiter:
    """One thread waiting for something the reader will hand it (an answer, a drain, the end)."""

    __slots__ = ("done", "error", "lock", "parked", "started", "value")

    def __init__(self, started: float = 0.0) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.parked = False  # sleeping on ``lock`` (only the client's lock changes this)
        self.lock: threading.Lock | None = None  # made on first park: the fast path never sleeps
        self.started = started  # perf_counter() when a PING left


class _Background:
    """The background reader's parking spot."""

    __slots__ = ("lock", "parked", "stop")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.parked = False
        self.stop = False


_BG = _Background()  # placeholder reader role for "the background thread" (never parked itself)


class _Conn:
    """One connection: its socket, codec, request table and who reads it.

    Everything but ``sock.send`` (under ``wlock``) is changed with the client's
    lock held.
    """

    __slots__ = (
        "bg_poll",
        "bg_polling",
        "close_reason",
        "closing",
        "codec",
        "dead",
        "decoder",
        "destroyed",
        "drain_waiters",
        "early",
        "fg_poll",
        "idle_since",
        "info",
        "io_lock",
        "lost_exc",
        "lost_waiters",
        "outbox",
        "parked",
        "peer_end",
        "pending",
        "reader",
        "remote_errors",
        "sock",
        "sock_closed",
        "w_poll",
        "wlock",
    )

    def __init__(
        self,
        sock: socket.socket,
        codec: PacketCodec,
        decoder: FrameDecoder,
        remote_errors: bool,
        info: dict[str, Any],
    ) -> None:
        self.sock = sock
        self.codec = codec
        self.decoder = decoder
        self.remote_errors = remote_errors
        self.info = info
        self.pending: dict[str, _Waiter] = {}
        self.parked: dict[_Waiter, None] = {}  # waiters asleep, in arrival order
        self.reader: _Waiter | _Background | None = None
        self.bg_polling = False
        self.idle_since = _monotonic()
        self.outbox: list[tuple[int, Any, Any]] = []  # PONGs and answers, written after unlocking
        self.early: list[Body] = []  # packets that came with the CONNECTION answer
        self.drain_waiters: list[_Waiter] = []  # done when no request is pending
        self.lost_waiters: list[_Waiter] = []  # done when the connection is gone
        self.wlock = threading.Lock()
        # OpenSSL objects must not be used by two threads at once; plain sockets may.
        self.io_lock = threading.Lock() if isinstance(sock, _ssl.SSLSocket) else None
        self.fg_poll = _poller(sock, False)
        self.bg_poll = _poller(sock, False)
        self.w_poll = _poller(sock, True)
        self.dead = False
        self.sock_closed = False
        self.closing = False
        self.destroyed = False
        self.close_reason: Any = None
        self.peer_end: dict[str, Any] | None = None
        self.lost_exc: ConnectionClosedError | None = None


class _Broken(Exception):
    """A write failed: the connection is gone (handled by the caller, outside the write lock)."""


class _SendTimeout(Exception):
    """Nothing could be written before the deadline (the caller raises RequestTimeoutError)."""


# ---------------------------------------------------------------------- client parts


class _Respond:
    """The ``respond`` callable handed to the client's ``request`` listeners.

    Call it once with the answer (it returns when the answer is written).

    Attributes:
        done: Whether an answer was sent.
    """

    __slots__ = ("_client", "_conn", "_lock", "_nonce", "done")

    def __init__(self, client: IPCClient, conn: _Conn, nonce: Any) -> None:
        self._client = client
        self._conn = conn
        self._nonce = nonce
        self._lock = threading.Lock()
        self.done = False

    def _claim(self) -> bool:
        with self._lock:
            if self.done:
                return False
            self.done = True
            return True

    def __call__(self, data: Any = None) -> None:
        if not self._claim():
            raise RuntimeError("this request was already answered")
        conn = self._conn
        if conn.dead:
            return  # the requester is gone; nothing to answer
        try:
            self._client._transmit(conn, RESPONSE, data, self._nonce, _monotonic() + _SEND_TIMEOUT)
        except TypeError:
            self.done = False  # not encodable: nothing was sent, the chain may still answer
            raise
        except _SendTimeout:
            raise IPCError("could not answer the server: it does not read") from None

    def fail(self, exc: BaseException) -> None:
        """Answer with an error (a listener raised)."""
        if not self._claim() or self._conn.dead:
            return
        conn = self._conn
        with contextlib.suppress(IPCError, OSError, _SendTimeout):
            self._client._transmit_with(
                conn,
                lambda: error_answer(conn.codec, self._nonce, exc, conn.remote_errors),
                _monotonic() + _SEND_TIMEOUT,
            )

    def finish(self) -> None:
        """End of the listener chain: answer ``None`` if nobody answered (never a hang)."""
        if not self.done:
            with contextlib.suppress(RuntimeError, IPCError, OSError):
                self(None)


class _Listeners:
    """The one library thread that runs a client's listeners, in order.

    Started on the first event; ended (after the events queued before) by
    ``stop``. A fresh thread and queue serve the next connect.
    """

    def __init__(self, client: IPCClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...], _Respond | None] | None] | None
        self._queue = None
        self.ident: int | None = None

    def put(self, event: str, args: tuple[Any, ...], respond: _Respond | None = None) -> None:
        with self._lock:
            q = self._queue
            if q is None:
                q = self._queue = queue.SimpleQueue()
                thread = threading.Thread(
                    target=self._run, args=(q,), name="ipc_server listeners", daemon=True
                )
                thread.start()
                self.ident = thread.ident
            q.put((event, args, respond))

    def stop(self) -> None:
        with self._lock:
            if self._queue is not None:
                self._queue.put(None)
                self._queue = None

    def _run(
        self, q: queue.SimpleQueue[tuple[str, tuple[Any, ...], _Respond | None] | None]
    ) -> None:
        client = self._client
        while True:
            item = q.get()
            if item is None:
                return
            event, args, respond = item
            try:
                fns = client._take(event)
                if fns is None:
                    if respond is not None:
                        respond.finish()
                    continue
                client._run_chain(event, fns, args, respond)
            except Exception:  # pragma: no cover - the chain reports listener errors itself
                logger.exception("ipc_server: failure running %r listeners", event)


class Subscription:
    """Messages of one topic as a blocking iterator (see ``IPCClient.subscription``).

    ``for message in sub`` waits for each message and ends when the client
    closes for good; ``get`` waits at most ``timeout`` seconds.
    """

    def __init__(self, client: IPCClient, topic: str, maxsize: int = 0) -> None:
        self.client = client
        self.topic = topic
        self._maxsize = maxsize
        # One slot more than maxsize, so that the end marker always fits.
        self._queue: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize + 1 if maxsize else 0)

    def _put(self, message: Any) -> None:
        # Only the reading thread puts messages: the size check cannot race another put.
        if self._maxsize and self._queue.qsize() >= self._maxsize:
            return  # full: drop, as the asyncio Subscription does
        self._queue.put_nowait((True, message))

    def _end(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((False, None))

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Any:
        more, message = self._queue.get()
        if not more:
            self._end()  # stay ended
            raise StopIteration
        return message

    def get(self, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """The next message.

        Raises:
            TimeoutError: None within ``timeout`` seconds (0/None: wait forever).
            ConnectionClosedError: The client closed for good.
        """
        seconds = deadline_of(timeout)
        try:
            more, message = self._queue.get(timeout=seconds)
        except queue.Empty:
            raise TimeoutError(f"no message on {self.topic!r} within {seconds:g} s") from None
        if not more:
            self._end()
            raise ConnectionClosedError("client closed")
        return message


# ---------------------------------------------------------------------- the client


class IPCClient(EventEmitter):
    """A blocking IPC client; thread-safe: any number of threads may call it at once.

    Events (listeners are plain functions; they run on one library thread):
    ``ready(info)``, ``error(error)``, ``close(reason)`` (closed for good),
    ``status(status)``, ``message(message)``, ``request(request, respond)``,
    and one event per subscribed topic (``handler(message)``).

    It takes the keyword options of the asyncio ``ipc_server.IPCClient``
    (all but ``max_queued``), with the same meanings and defaults. Windows
    named pipes are not supported by the blocking client; TCP and TLS are.
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        ssl: _ssl.SSLContext | None = None,
        handshake: bool = False,
        upgrade_token: str = "isdk-ipc",
        reconnect: bool = True,
        retries: int = 3,
        max_retry_time: float = 10.0,
        connect_timeout: float | None = 10.0,
        codec: CodecName = "json",
        compress: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        request_timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.address: Address = client_address(
            path,
            host,
            port,
            ssl=ssl,
            codec=codec,
            retries=retries,
            max_retry_time=max_retry_time,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
        self.ssl = ssl
        self.handshake = handshake
        self.upgrade_token = upgrade_token
        self.reconnect = reconnect
        self.retries = retries
        self.max_retry_time = max_retry_time
        self.connect_timeout = connect_timeout
        self.codec: CodecName = codec
        self.compress = compress
        self.max_message_size = max_message_size
        self.request_timeout = request_timeout
        self.id: str | None = None
        """The id the server assigned; kept across reconnects."""
        self.status = IPCClientStatus.IDLE
        self.info: dict[str, Any] = {}
        """What the server answered in the CONNECTION exchange (id, compress, messagepack)."""
        self._nonces = itertools.count(1)
        self._payload: Any = None
        # The client's lock: reader roles, request tables, recv + dispatch. Held briefly only.
        self._lock = threading.Lock()
        self._ready = threading.Condition(threading.Lock())  # READY or closed for good
        self._elock = threading.Lock()  # listener lists
        self._push = False  # some listener wants what the server pushes
        self._conn: _Conn | None = None
        self._closed = True  # closed for good (or never connected)
        self._finished = True  # close was emitted (or there was nothing to close)
        self._close_reason: Any = None
        self._bg: _Background | None = None
        self._stop = threading.Event()  # set when closed: ends reconnect sleeps
        self._listeners_thread = _Listeners(self)
        self._topics: dict[str, None] = {}  # topics to restore after a reconnect
        self._slock = threading.Lock()  # subscription bookkeeping
        self._sub_refs: dict[str, int] = {}
        self._subscriptions: dict[str, list[Subscription]] = {}  # copy-on-write lists

    def __repr__(self) -> str:
        return f"<sync.IPCClient {self.address} id={self.id!r} status={self.status.name}>"

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

    def _emit(self, event: str, *args: Any) -> None:
        """Queue ``event`` for the listener thread (only when it has listeners)."""
        if event in self._fns:
            self._listeners_thread.put(event, args)

    def _report(self, exc: BaseException) -> None:
        if "error" in self._fns:
            self._listeners_thread.put("error", (exc,))
        else:
            logger.warning("ipc_server client: %s", exc)

    def _push_wanted(self) -> bool:
        return self._push or bool(self._topics) or bool(self._subscriptions)

    # ------------------------------------------------------------------ status

    def _set_status(self, status: IPCClientStatus) -> None:
        if status is self.status:
            return
        self.status = status
        self._emit("status", status)

    def _set_status_unless(self, stop: threading.Event, status: IPCClientStatus) -> None:
        """Set ``status`` unless the client closed meanwhile (its status is then IDLE for good)."""
        with self._lock:
            if not stop.is_set():
                self._set_status(status)

    @property
    def is_ready(self) -> bool:
        """Whether the client can send now."""
        return self.status is IPCClientStatus.READY

    @property
    def topics(self) -> list[str]:
        """Topics this client is subscribed to (restored after a reconnect)."""
        return list(self._topics)

    # ------------------------------------------------------------------ connecting

    def connect(
        self, payload: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> IPCClient:
        """Connect and run the CONNECTION exchange; ``payload`` reaches the server's ``connect``.

        One attempt, bounded by ``timeout`` (default ``connect_timeout``);
        reconnects happen only after a connection was established.

        Raises:
            HandshakeError: The server refused the client or answered with something else.
            TimeoutError: Not connected within the timeout.
            OSError: No server there (``ConnectionRefusedError``, ``FileNotFoundError``).
        """
        _check_not_serving(self.address, "connect")
        if timeout is DEFAULT:
            timeout = self.connect_timeout
        seconds = deadline_of(timeout)
        with self._lock:
            if self.status is not IPCClientStatus.IDLE or not self._closed:
                raise RuntimeError(f"connect() needs an idle client; status is {self.status.name}")
            self._payload = payload
            self._closed = False
            self._finished = False
            self._close_reason = None
            self._stop = threading.Event()
        try:
            self._open(seconds, self._stop)
        except BaseException:
            with self._lock:
                self._closed = True
                self._finished = True
                self._set_status(IPCClientStatus.IDLE)
            raise
        return self

    def _dial(self, deadline: float | None) -> socket.socket:
        address = self.address
        remaining = None if deadline is None else max(0.001, deadline - _monotonic())
        if address.kind == "unix":
            assert address.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(remaining)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
            return sock
        if address.kind == "tcp":
            host = address.host or "127.0.0.1"
            sock = socket.create_connection((host, address.port or 0), timeout=remaining)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl is not None:
                    return self.ssl.wrap_socket(sock, server_hostname=address.host)
            except BaseException:
                sock.close()
                raise
            return sock
        raise NotImplementedError(
            "the blocking IPCClient does not support Windows named pipes; "
            "use host=/port= or the asyncio IPCClient"
        )

    def _handshake(self, sock: socket.socket, deadline: float | None) -> _Conn:
        """The preamble and the CONNECTION exchange, blocking (nobody else uses ``sock`` yet)."""

        def recv() -> bytes:
            if deadline is not None:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    raise TimeoutError("connect timed out during the handshake")
                sock.settimeout(remaining)
            chunk = sock.recv(_RECV_SIZE)
            if not chunk:
                raise ConnectionClosedError("connection lost during the handshake")
            return chunk

        if deadline is not None:
            sock.settimeout(max(0.001, deadline - _monotonic()))
        packet = connection_packet(self._payload, self.id, compress=self.compress, codec=self.codec)
        rest = b""
        if self.handshake:
            sock.sendall(
                upgrade_request(self.address.host or self.upgrade_token, self.upgrade_token)
            )
            preamble = ClientPreamble()
            consumed = None
            while consumed is None:
                try:
                    consumed = preamble.feed(recv())
                except ProtocolError as exc:
                    raise HandshakeError(str(exc)) from exc
            rest = bytes(preamble.data[consumed:])
            sock.sendall(packet)
        else:
            sock.sendall(BINARY_PREAMBLE + packet)
        decoder = FrameDecoder(self.max_message_size)
        codec = PacketCodec(self.max_message_size)
        bodies = decoder.feed(rest) if rest else []
        while not bodies:
            bodies = decoder.feed(recv())
        t, d, _, _ = codec.decode(bodies[0])
        if t == END:
            raise HandshakeError(end_data(d).get("m"))  # refused before admission
        if t != CONNECTION or type(d) is not dict:
            raise ProtocolError(f"expected the CONNECTION answer, got packet type {t}")
        agreed = read_agreement(d)
        codec.configure(messagepack=agreed.messagepack, compress=agreed.compress)
        sock.setblocking(False)
        conn = _Conn(sock, codec, decoder, agreed.remote_errors, d)
        # Packets that came with the answer are dispatched once the connection is in place.
        conn.early = bodies[1:]
        return conn

    def _open(self, seconds: float | None, stop: threading.Event) -> None:
        self._set_status_unless(stop, IPCClientStatus.CONNECTING)
        deadline = None if seconds is None else _monotonic() + seconds
        sock = self._dial(deadline)
        try:
            self._set_status_unless(stop, IPCClientStatus.CONNECTED)
            conn = self._handshake(sock, deadline)
        except BaseException:
            sock.close()
            raise
        lock = self._lock
        with lock:
            if stop.is_set():
                sock.close()
                raise ConnectionClosedError("client closed while connecting")
            self._conn = conn
            info = conn.info
            self.info = info
            if isinstance(info.get("id"), str):
                self.id = info["id"]
            for body in conn.early:
                self._dispatch_body(conn, body)
            conn.early = []
            bg = self._bg
            if bg is None:
                bg = self._bg = _Background()
                threading.Thread(
                    target=self._background, args=(bg,), name="ipc_server reader", daemon=True
                ).start()
            else:
                self._wake_bg()
            out = self._take_outbox(conn)
        if out:
            self._flush_outbox(conn, out)
        if self._topics:
            # After a reconnect: subscriptions are back before anyone hears "ready".
            try:
                self._call_on(
                    conn, REQUEST, request_subscribe(list(self._topics)), deadline, follow=False
                )
            except IPCError as exc:
                self._report(exc)
        with lock:
            if conn.dead:
                return  # lost again: _on_lost has taken over (reconnecting or closed)
            self._set_status(IPCClientStatus.READY)
        with self._ready:
            self._ready.notify_all()
        self._emit("ready", info)

    def _conn_ready(self, deadline: float | None) -> _Conn:
        """The live connection, waiting (bounded) while a reconnect is under way."""
        conn = self._conn
        if conn is not None and self.status is IPCClientStatus.READY:
            return conn
        with self._ready:
            while True:
                conn = self._conn
                if conn is not None and self.status is IPCClientStatus.READY:
                    return conn
                if self._closed:
                    reason = self._close_reason
                    raise ConnectionClosedError(
                        reason if reason is not None else "client is not connected"
                    )
                if deadline is None:
                    self._ready.wait()
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise RequestTimeoutError(0.0, "waiting for the reconnect")
                    self._ready.wait(remaining)

    # ------------------------------------------------------------------ losing a connection

    def _lost(self, conn: _Conn, exc: BaseException | None) -> None:
        """The connection is gone: fail what waits on it, then decide about reconnecting.

        Called with the client's lock held; idempotent.
        """
        if conn.dead:
            return
        conn.dead = True
        reason, error = loss(conn.peer_end, conn.close_reason, exc, conn.destroyed)
        conn.lost_exc = error
        pending = conn.pending
        conn.pending = {}
        for w in pending.values():
            w.error = error
            self._complete(conn, w)
        for w in conn.drain_waiters + conn.lost_waiters:
            self._complete(conn, w)
        conn.drain_waiters = []
        conn.lost_waiters = []
        conn.outbox = []
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes every thread polling it
        if conn.reader is _BG:
            conn.reader = None
        self._release_sock(conn)
        self._on_lost(conn, reason)

    def _release_sock(self, conn: _Conn) -> None:
        # Close the fd only when no thread can be polling it (its number could be reused).
        if conn.dead and not conn.sock_closed and conn.reader is None and not conn.bg_polling:
            conn.sock_closed = True
            conn.sock.close()

    def _on_lost(self, conn: _Conn, reason: Any) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._set_status(IPCClientStatus.DISCONNECTED)
        end = conn.peer_end
        if self._closed:
            self._finish(reason)
        elif end is not None and not end.get("a"):
            self._finish(end.get("m"))  # the server closed us for good
        elif conn.destroyed or conn.closing or not self.reconnect or self.retries == 0:
            self._finish(reason)
        else:
            threading.Thread(
                target=self._reconnect_loop,
                args=(reason, self._stop),
                name="ipc_server reconnect",
                daemon=True,
            ).start()

    def _reconnect_loop(self, reason: Any, stop: threading.Event) -> None:
        last: Any = reason
        for attempt in range(1, self.retries + 1):
            self._set_status_unless(stop, IPCClientStatus.RECONNECTING)
            if stop.wait(backoff(attempt, self.max_retry_time)):
                return
            try:
                self._open(deadline_of(self.connect_timeout), stop)
            except HandshakeError as exc:
                last = exc
                break  # refused: retrying will not help
            except (OSError, TimeoutError, IPCError) as exc:
                last = exc
                if stop.is_set():
                    return
                self._set_status_unless(stop, IPCClientStatus.DISCONNECTED)
                continue
            return
        with self._lock:
            if not stop.is_set():
                self._finish(last)

    def _finish(self, reason: Any) -> None:
        """Closed for good: wake waiters, end subscriptions, emit ``close(reason)``.

        Called with the client's lock held.
        """
        first = not self._finished
        self._finished = True
        self._closed = True
        self._close_reason = reason
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        for subs in self._subscriptions.values():
            for sub in subs:
                sub._end()
        self._set_status(IPCClientStatus.IDLE)
        if first:
            self._emit("close", reason)
        bg = self._bg
        if bg is not None:
            self._bg = None
            bg.stop = True
            self._signal_bg(bg)
        self._listeners_thread.stop()

    # ------------------------------------------------------------------ reading (leader/follower)

    @staticmethod
    def _complete(conn: _Conn, w: _Waiter) -> None:
        """Mark ``w`` done and wake it if it sleeps (lock held)."""
        w.done = True
        if w.parked:
            w.parked = False
            del conn.parked[w]
            assert w.lock is not None
            w.lock.release()

    def _forget(self, conn: _Conn, nonce: str) -> None:
        """Drop a pending entry the caller gave up on (lock held)."""
        conn.pending.pop(nonce, None)
        if not conn.pending and conn.drain_waiters:
            self._drained(conn)

    def _drained(self, conn: _Conn) -> None:
        """No request is pending any more: wake ``close()`` (lock held)."""
        for w in conn.drain_waiters:
            self._complete(conn, w)
        conn.drain_waiters = []

    def _wait(self, conn: _Conn, w: _Waiter, deadline: float | None) -> bool:
        """Block until ``w`` is done (True) or ``deadline`` passes (False).

        The calling thread reads the socket itself when nobody else does
        (taking the role from the background thread), else sleeps until it is
        handed its answer or promoted to reader.
        """
        lock = self._lock
        while True:
            lock.acquire()
            if w.done or conn.dead:  # a dead connection completed all its waiters
                lock.release()
                return w.done
            reader = conn.reader
            if reader is None or reader is _BG:
                conn.reader = w
                lock.release()
                if self._lead(conn, w, deadline):
                    return True
                if deadline is not None and _monotonic() >= deadline:
                    return False
                continue
            if deadline is None:
                remaining = -1.0
            else:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    lock.release()
                    return False
            sem = w.lock
            if sem is None:
                sem = w.lock = threading.Lock()
                sem.acquire()
            w.parked = True
            conn.parked[w] = None
            lock.release()
            if not sem.acquire(True, remaining):
                with lock:
                    if w.parked:
                        w.parked = False
                        del conn.parked[w]
                    else:
                        sem.acquire(False)  # woken just after the timeout: take the wake-up
            # Done, promoted, or timed out: the top of the loop tells which (a timed-out
            # waiter that was promoted passes the role on through _lead/_step_down).

    def _lead(self, conn: _Conn, w: _Waiter, deadline: float | None) -> bool:
        """As the reader: poll, recv and dispatch until ``w`` is done (True) or ``deadline``.

        Gives up the reader role before returning (see ``_step_down``).
        """
        lock = self._lock
        poll = conn.fg_poll
        io = conn.io_lock
        try:
            while True:
                if deadline is None:
                    remaining = None
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        break
                try:
                    ready = (io is not None and self._tls_pending(conn, io)) or poll(remaining)
                except (OSError, ValueError):
                    ready = True  # let recv tell what happened
                with lock:
                    if ready and not conn.dead:
                        self._pump(conn)
                    finished = w.done or conn.dead
                    if finished and not conn.outbox:
                        # The common exit: give up the role in this same hold of the lock.
                        if conn.reader is w:
                            if conn.parked or conn.dead:
                                self._step_down(conn)
                                self._release_sock(conn)
                            else:
                                conn.reader = None
                                conn.idle_since = _monotonic()
                        return w.done
                    out = self._take_outbox(conn) if conn.outbox else None
                if out:
                    self._flush_outbox(conn, out)
                if finished:
                    break
        finally:
            if conn.reader is w:  # not given up yet: deadline, an answer to flush, an error
                with lock:
                    if conn.reader is w:
                        self._step_down(conn)
                    self._release_sock(conn)
        return w.done

    @staticmethod
    def _tls_pending(conn: _Conn, io: threading.Lock) -> bool:
        """Whether decrypted bytes wait in the TLS layer (poll() cannot see them)."""
        with io:
            return cast(_ssl.SSLSocket, conn.sock).pending() > 0

    def _step_down(self, conn: _Conn) -> None:
        """Give up the reader role to a sleeping waiter, if there is one (lock held)."""
        conn.reader = None
        parked = conn.parked
        if parked:
            w = next(iter(parked))
            del parked[w]
            w.parked = False
            assert w.lock is not None
            w.lock.release()  # promoted: it takes the role at the top of its loop
            return
        # The background thread takes over once the connection has been idle for a
        # grace period: waking it now would cost a thread hop per call.
        conn.idle_since = _monotonic()

    def _wake_bg(self) -> None:
        bg = self._bg
        if bg is not None:
            self._signal_bg(bg)

    @staticmethod
    def _signal_bg(bg: _Background) -> None:
        if bg.parked:
            bg.parked = False
            bg.lock.release()

    def _background(self, bg: _Background) -> None:
        """The background reader: reads when no caller does (see the module docstring)."""
        lock = self._lock
        while True:
            lock.acquire()
            if bg.stop:
                lock.release()
                return
            conn = self._conn
            wait: float | None = None
            if conn is not None and not conn.dead:
                reader = conn.reader
                grace = _PUSH_GRACE if self._push_wanted() else _IDLE_GRACE
                if reader is None:
                    idle = _monotonic() - conn.idle_since
                    if idle >= grace:
                        conn.reader = reader = _BG
                    else:
                        wait = grace - idle
                elif reader is not _BG:
                    wait = grace  # a caller reads; look again later
                if reader is _BG:
                    conn.bg_polling = True
                    lock.release()
                    try:
                        ready = conn.bg_poll(None)
                    except (OSError, ValueError):
                        ready = True
                    lock.acquire()
                    conn.bg_polling = False
                    if ready and conn.reader is _BG and not conn.dead:
                        self._pump(conn)
                    self._release_sock(conn)
                    out = self._take_outbox(conn) if conn.outbox else None
                    lock.release()
                    if out:
                        self._flush_outbox(conn, out)
                    continue
            bg.parked = True
            lock.release()
            woke = bg.lock.acquire(True, -1.0 if wait is None else wait)
            if not woke:
                with lock:
                    if bg.parked:
                        bg.parked = False
                    else:
                        bg.lock.acquire(False)

    def _pump(self, conn: _Conn) -> None:
        """Read what the socket has (without blocking) and dispatch it (lock held)."""
        sock = conn.sock
        try:
            if conn.io_lock is None:
                data = sock.recv(_RECV_SIZE)
            else:
                with conn.io_lock:
                    data = sock.recv(_RECV_SIZE)
                    while cast(_ssl.SSLSocket, sock).pending():
                        data += sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._lost(conn, exc)
            return
        if not data:
            self._lost(conn, None)
            return
        try:
            bodies = conn.decoder.feed(data)
        except ProtocolError as exc:
            self._fatal(conn, exc)
            return
        for body in bodies:
            if conn.dead:
                break
            self._dispatch_body(conn, body)

    def _fatal(self, conn: _Conn, exc: BaseException) -> None:
        """The stream is broken: report it and drop the connection (lock held)."""
        self._report(exc)
        if conn.close_reason is None:
            conn.close_reason = exc
        self._lost(conn, exc)

    def _dispatch_body(self, conn: _Conn, body: Body) -> None:
        """Decode one packet and hand it to whom it belongs (lock held)."""
        try:
            t, d, n, packet = conn.codec.decode(body)
        except MessageTooLargeError as exc:
            self._fatal(conn, exc)
            return
        except ProtocolError as exc:
            if conn.codec.compress:
                self._fatal(conn, exc)  # the shared inflate stream cannot be trusted any more
            else:
                self._report(exc)  # drop this packet, keep the connection
            return
        if t == RESPONSE:
            w = conn.pending.pop(n, None)
            if w is None:
                return  # late answer to a request that timed out: drop it
            error = packet.get("e")
            if error is not None and type(error) is dict:
                w.error = remote_error(error)
            else:
                w.value = d
            w.done = True
            if w.parked:
                self._complete(conn, w)
            if conn.drain_waiters and not conn.pending:
                self._drained(conn)
        elif t == MESSAGE:
            topic = published_topic(d)
            if topic is not None:
                message = d["message"]
                subs = self._subscriptions.get(topic)
                if subs:
                    for sub in subs:
                        sub._put(message)
                if topic not in RESERVED_EVENTS:
                    # A topic named like a built-in event ("close", "error", ...) would
                    # fire that event's listeners; such topics reach subscription() only.
                    self._emit(topic, message)
            else:
                self._emit("message", d)
        elif t == REQUEST:
            if "request" in self._fns:
                respond = _Respond(self, conn, n)
                self._listeners_thread.put("request", (d, respond), respond)
            else:
                conn.outbox.append((RESPONSE, None, n))  # nobody listens: None, never a hang
        elif t == PING:
            conn.outbox.append((PONG, d, n))
        elif t == PONG:
            w = conn.pending.pop(n, None)
            if w is not None:
                w.value = time.perf_counter() - w.started
                self._complete(conn, w)
        elif t == END:
            conn.peer_end = end_data(d)
        elif t == CONNECTION:
            self._report(ProtocolError("unexpected CONNECTION packet after the handshake"))

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _take_outbox(conn: _Conn) -> list[tuple[int, Any, Any]]:
        out = conn.outbox
        conn.outbox = []
        return out

    def _flush_outbox(self, conn: _Conn, out: list[tuple[int, Any, Any]]) -> None:
        deadline = _monotonic() + _SEND_TIMEOUT
        for t, d, n in out:
            try:
                self._transmit(conn, t, d, n, deadline)
            except (IPCError, OSError, _SendTimeout) as exc:
                if not conn.dead:
                    self._report(
                        exc
                        if not isinstance(exc, _SendTimeout)
                        else IPCError("could not answer the server: it does not read")
                    )
                return

    def _transmit(self, conn: _Conn, t: int, d: Any, n: Any, deadline: float | None) -> None:
        """Encode and write one packet.

        Raises:
            TypeError: ``d`` cannot be encoded.
            ConnectionClosedError: The connection is gone.
            _SendTimeout: Nothing could be written before ``deadline``.
        """
        codec = conn.codec
        if codec.compress:
            # One deflate stream per direction: encode in the order of writing.
            self._transmit_with(conn, lambda: codec.encode(t, d, n), deadline)
            return
        data = codec.encode(t, d, n)
        wlock = conn.wlock
        if not wlock.acquire(False) and not wlock.acquire(True, self._left(deadline)):
            raise _SendTimeout
        try:
            if conn.io_lock is None and not conn.dead:
                # Inlined first attempt: a small packet nearly always leaves in one send().
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    raise _Broken(exc) from exc
                if sent < len(data):
                    self._write(conn, data, deadline, sent)
            else:
                self._write(conn, data, deadline)
        except _Broken as broken:
            wlock.release()
            self._broken(conn, broken)
        else:
            wlock.release()

    def _transmit_with(
        self, conn: _Conn, encode: Callable[[], bytes], deadline: float | None
    ) -> None:
        """Write what ``encode()`` makes, encoding under the write lock."""
        wlock = conn.wlock
        if not wlock.acquire(False) and not wlock.acquire(True, self._left(deadline)):
            raise _SendTimeout
        try:
            self._write(conn, encode(), deadline)
        except _Broken as broken:
            wlock.release()
            self._broken(conn, broken)
        else:
            wlock.release()

    @staticmethod
    def _left(deadline: float | None) -> float:
        """Seconds to ``deadline`` for ``Lock.acquire`` (-1: no deadline)."""
        return -1.0 if deadline is None else max(0.0, deadline - _monotonic())

    @staticmethod
    def _write(conn: _Conn, data: bytes, deadline: float | None, sent: int = 0) -> None:
        """Write ``data`` from byte ``sent`` on (write lock held). Raises _Broken, _SendTimeout."""
        if conn.dead:
            raise _Broken(None)
        sock = conn.sock
        io = conn.io_lock
        size = len(data)
        view = memoryview(data) if size > 0x10000 else data  # small: sliced at most once
        while True:
            try:
                if io is None:
                    sent += sock.send(view[sent:] if sent else data)
                else:
                    with io:
                        sent += sock.send(view[sent:] if sent else data)
            except (
                BlockingIOError,
                InterruptedError,
                _ssl.SSLWantWriteError,
                _ssl.SSLWantReadError,
            ):
                pass
            except OSError as exc:
                raise _Broken(exc) from exc
            if sent >= size:
                return
            if deadline is None:
                conn.w_poll(None)
                continue
            remaining = deadline - _monotonic()
            if remaining <= 0:
                if sent:
                    # Part of a packet is on the wire: the stream cannot go on.
                    raise _Broken(IPCError("send timed out in the middle of a packet"))
                raise _SendTimeout
            conn.w_poll(remaining)

    def _broken(self, conn: _Conn, broken: _Broken) -> None:
        """A write failed: read what the server said last (its END), drop the connection, raise."""
        cause = broken.args[0] if broken.args else None
        with self._lock:
            if not conn.dead:
                # The END that explains the failure, if it came. Safe whoever reads:
                # the connection is dropped next, which wakes a polling reader.
                self._pump(conn)
            self._lost(conn, cause if isinstance(cause, BaseException) else None)
        assert conn.lost_exc is not None
        raise conn.lost_exc from cause if isinstance(cause, BaseException) else None

    # ------------------------------------------------------------------ operations

    def _begin(self, deadline: float | None, what: str) -> _Conn:
        """The connection to use now; reads what arrived while nobody read (lock not held)."""
        _check_not_serving(self.address, what)
        conn = self._conn
        if conn is None or self.status is not IPCClientStatus.READY:
            conn = self._conn_ready(deadline)
        return conn

    def _call_on(
        self,
        conn: _Conn,
        t: int,
        data: Any,
        deadline: float | None,
        seconds: float | None = None,
        *,
        follow: bool = True,
    ) -> Any:
        """A REQUEST or PING on ``conn`` and its answer.

        With ``follow``, a connection found dead before sending is replaced by
        the next one (waiting for a reconnect, within ``deadline``).
        """
        if seconds is None and deadline is not None:
            seconds = max(0.0, deadline - _monotonic())
        nonce = str(next(self._nonces))
        w = _Waiter()
        lock = self._lock
        while True:
            lock.acquire()
            if conn.dead or conn.closing:
                lock.release()
                if follow and conn.dead and not self._closed:
                    conn = self._conn_ready(deadline)  # reconnecting: wait for it
                    continue
                raise conn.lost_exc or ConnectionClosedError("connection is closing")
            conn.pending[nonce] = w
            reader = conn.reader
            # Nobody else waits: this thread will read its own answer (no thread hop).
            # An idle connection is the background thread's, and is taken from it.
            lead = reader is None or reader is _BG
            if lead:
                conn.reader = w
            lock.release()
            break
        done = False
        try:
            if t == PING:
                w.started = time.perf_counter()
            self._transmit(conn, t, data, nonce, deadline)
            if lead:
                done = self._lead(conn, w, deadline)  # gives the role up again
        except BaseException as exc:
            with lock:
                if lead and conn.reader is w:  # the send failed before _lead took over
                    self._step_down(conn)
                    self._release_sock(conn)
                self._forget(conn, nonce)
            if isinstance(exc, _SendTimeout):
                raise RequestTimeoutError(seconds or 0.0, "send") from None
            raise
        if not done and not self._wait(conn, w, deadline):
            with lock:
                if not w.done:
                    self._forget(conn, nonce)
            if not w.done:
                lost = conn.lost_exc  # set when the connection died under us
                if lost is not None:
                    raise lost
                raise RequestTimeoutError(seconds or 0.0, "ping" if t == PING else "request")
        if w.error is not None:
            raise w.error
        return w.value

    def request(self, data: Any, timeout: float | Default | None = DEFAULT) -> Any:
        """Send a request and return the server's answer.

        ``timeout`` in seconds (default: ``request_timeout``, 10 s; 0/None: forever).

        Raises:
            RequestTimeoutError: No answer in time.
            ConnectionClosedError: The connection closed before the answer came.
            RemoteError: The server's handler raised.
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        # The common case (a positive float) skips deadline_of's checks.
        seconds = timeout if type(timeout) is float and timeout > 0 else deadline_of(timeout)
        deadline = None if seconds is None else _monotonic() + seconds
        conn = self._conn
        if conn is None or self.status is not IPCClientStatus.READY or _LOOP_OWNERS:
            conn = self._begin(deadline, "request")
        return self._call_on(conn, REQUEST, data, deadline, seconds)

    def ping(self, data: Any = None, timeout: float | Default | None = DEFAULT) -> float:
        """Round trip to the server in seconds (the server echoes ``data``)."""
        if timeout is DEFAULT:
            timeout = self.request_timeout
        seconds = deadline_of(timeout)
        deadline = None if seconds is None else _monotonic() + seconds
        latency: float = self._call_on(self._begin(deadline, "ping"), PING, data, deadline, seconds)
        return latency

    def send(self, data: Any, timeout: float | Default | None = DEFAULT) -> None:
        """Send a one-way message (the server's ``message`` event).

        Blocks only while the socket's buffer is full, at most ``timeout`` seconds.
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        seconds = deadline_of(timeout)
        deadline = None if seconds is None else _monotonic() + seconds
        conn = self._begin(deadline, "send")
        if conn.dead or conn.closing:
            raise conn.lost_exc or ConnectionClosedError("connection is closing")
        try:
            self._transmit(conn, MESSAGE, data, None, deadline)
        except _SendTimeout:
            raise RequestTimeoutError(seconds or 0.0, "send") from None

    # ------------------------------------------------------------------ pub/sub

    def subscribe(self, topic: str | list[str], timeout: float | Default | None = DEFAULT) -> bool:
        """Subscribe to a topic (or several); messages are emitted under the topic's name."""
        topics = topic_list(topic)
        ok = succeeded(self.request(request_subscribe(topic), timeout))
        if ok:
            for t in topics:
                self._topics[t] = None
        return ok

    def unsubscribe(
        self, topic: str | list[str], timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Unsubscribe; False when it was not subscribed."""
        for t in topic_list(topic):
            self._topics.pop(t, None)
        return succeeded(self.request(request_unsubscribe(topic), timeout))

    def publish(
        self, topic: str, message: Any = None, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Publish ``message`` to every subscriber of ``topic`` (through the server)."""
        return succeeded(self.request(request_publish(topic, message), timeout))

    @contextlib.contextmanager
    def subscription(
        self, topic: str, *, maxsize: int = 0, timeout: float | Default | None = DEFAULT
    ) -> Iterator[Subscription]:
        """Subscribe on entry and yield a blocking iterator of the topic's messages.

        On exit it unsubscribes, unless the topic is still wanted elsewhere
        (another live ``subscription()`` or an explicit ``subscribe``).
        ``maxsize`` bounds the queue (0: unbounded; when full, new messages are
        dropped). ``timeout`` bounds the subscribe and unsubscribe requests.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        sub = Subscription(self, topic, maxsize)
        with self._slock:
            explicit = topic in self._topics and not self._sub_refs.get(topic)
            self._sub_refs[topic] = self._sub_refs.get(topic, 0) + 1
            # Registered before subscribing, so the first message cannot slip past it.
            self._subscriptions[topic] = [*self._subscriptions.get(topic, ()), sub]
        try:
            if topic not in self._topics and not self.subscribe(topic, timeout):
                raise IPCError(f"server refused the subscription to {topic!r}")
            yield sub
        finally:
            with self._slock:
                rest = [s for s in self._subscriptions.get(topic, ()) if s is not sub]
                if rest:
                    self._subscriptions[topic] = rest
                else:
                    self._subscriptions.pop(topic, None)
                self._sub_refs[topic] -= 1
                last = not self._sub_refs[topic]
                if last:
                    del self._sub_refs[topic]
            if last and not explicit and self.is_ready and topic in self._topics:
                with contextlib.suppress(IPCError):
                    self.unsubscribe(topic, timeout)

    # ------------------------------------------------------------------ closing

    def close(self, reason: Any = None, *, timeout: float | None = 10.0) -> bool:
        """Close gracefully: pending requests answered first, then END, then the socket.

        Waits at most ``timeout`` seconds, then drops the connection. Emits
        ``close(reason)``. Returns False if it was not connected.
        """
        _check_not_serving(self.address, "close")
        seconds = deadline_of(timeout)
        deadline = None if seconds is None else _monotonic() + seconds
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._stop.set()  # ends a reconnect under way
            conn = self._conn
            if conn is not None and not conn.dead:
                conn.closing = True
                conn.close_reason = reason
            else:
                conn = None
        if conn is not None:
            self._close_conn(conn, reason, deadline)
        with self._lock:
            self._finish(reason)
        return True

    def _close_conn(self, conn: _Conn, reason: Any, deadline: float | None) -> None:
        lock = self._lock
        drained = _Waiter()
        with lock:
            if conn.pending and not conn.dead:
                conn.drain_waiters.append(drained)
            else:
                drained.done = True
        if not drained.done:
            self._wait(conn, drained, deadline)
        with contextlib.suppress(IPCError, OSError, _SendTimeout):
            try:
                self._transmit(conn, END, {"m": reason, "a": False}, None, deadline)
            except TypeError:  # a reason the codec cannot carry: say it in words
                self._transmit(conn, END, {"m": str(reason), "a": False}, None, deadline)
        gone = _Waiter()
        with lock:
            if conn.dead:
                gone.done = True
            else:
                conn.lost_waiters.append(gone)
        if not gone.done and conn.io_lock is None:
            # Half-close: the server reads all we sent, then hangs up (as net-ipc does).
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._wait(conn, gone, deadline)
        # TLS cannot half-close (asyncio closes such a transport after END too).
        if not gone.done:
            with lock:
                self._lost(conn, None)

    def destroy(self, reason: Any = None) -> bool:
        """Close at once: pending requests fail with ConnectionDestroyedError; emits ``close``."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            conn = self._conn
            if conn is not None and not conn.dead:
                conn.destroyed = True
                if conn.close_reason is None:
                    conn.close_reason = reason
                self._lost(conn, None)
            self._finish(reason)
        return True

    def __enter__(self) -> IPCClient:
        if self._closed and self.status is IPCClientStatus.IDLE:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
