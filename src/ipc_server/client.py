"""IPCClient (docs/guide.md): connect, the status machine, reconnect, subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import ssl as _ssl
from collections.abc import AsyncIterator
from typing import Any

from .address import Address
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
from .codecs import CodecName
from .endpoint import (
    CONNECTION,
    DEFAULT_MAX_QUEUED,
    DEFAULT_TIMEOUT,
    END,
    REQUEST,
    Endpoint,
    Responder,
    deadline_of,
)
from .errors import (
    ConnectionClosedError,
    HandshakeError,
    IPCError,
    ProtocolError,
    RequestTimeoutError,
)
from .events import EventEmitter
from .protocol import (
    BINARY_PREAMBLE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ClientPreamble,
    upgrade_request,
)
from .transport import connect as open_transport

__all__ = ["IPCClient", "IPCClientStatus", "Subscription"]

RESERVED_EVENTS = frozenset(
    {"ready", "error", "close", "status", "message", "request", "connect", "disconnect"}
)
"""Built-in event names: messages on topics with these names are not emitted as events."""


class IPCClientStatus(enum.IntEnum):
    """The client's status; the numbers are the seed's."""

    IDLE = 0
    CONNECTING = 1
    CONNECTED = 2
    READY = 3
    DISCONNECTED = 4
    RECONNECTING = 5


class _ClientProtocol(Endpoint):
    """The client's end of one connection attempt."""

    def __init__(self, client: IPCClient) -> None:
        super().__init__(
            max_message_size=client.max_message_size,
            max_queued=client.max_queued,
            nonces=client._nonces,
        )
        self.client = client
        self._preamble = ClientPreamble() if client.handshake else None
        self.ready: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.info: dict[str, Any] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.client
        client._set_status(IPCClientStatus.CONNECTED)
        assert self._transport is not None
        if self._preamble is not None:
            host = client.address.host or client.upgrade_token
            self._transport.write(upgrade_request(host, client.upgrade_token))
        else:
            self._transport.write(BINARY_PREAMBLE + self._connection_packet())

    def _connection_packet(self) -> bytes:
        client = self.client
        return connection_packet(
            client._payload, client.id, compress=client.compress, codec=client.codec
        )

    def _on_preamble(self, data: bytes) -> bytes | None:
        preamble = self._preamble
        if preamble is None:
            return data
        try:
            consumed = preamble.feed(data)
        except ProtocolError as exc:
            self._fail_ready(HandshakeError(str(exc)))
            self._abort()
            return None
        if consumed is None:
            return None
        self._preamble = None
        assert self._transport is not None
        self._transport.write(self._connection_packet())
        return bytes(preamble.data[consumed:])

    def _on_connection_packet(self, t: int, d: Any, n: Any) -> None:
        if t == END:
            # Refused before admission (authentication, max_connections).
            end = end_data(d)
            self._peer_end = end
            self._fail_ready(HandshakeError(end.get("m")))
            return
        if t != CONNECTION or type(d) is not dict:
            self._fatal(ProtocolError(f"expected the CONNECTION answer, got packet type {t}"))
            return
        agreed = read_agreement(d)
        self._codec.configure(messagepack=agreed.messagepack, compress=agreed.compress)
        self.remote_errors = agreed.remote_errors
        self._handshaken = True
        self.info = d
        if not self.ready.done():
            self.ready.set_result(d)

    def _fail_ready(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)

    def _on_message(self, data: Any) -> None:
        topic = published_topic(data)
        if topic is not None:
            self.client._on_published(topic, data["message"])
        else:
            self.client.emit("message", data)

    def _on_request(self, data: Any, respond: Responder) -> None:
        client = self.client
        fns = client._take("request")
        if fns is None:
            respond(None)
        else:
            client._run_chain("request", fns, (data, respond), respond, self._tasks)

    def _on_lost(self, reason: Any, exc: BaseException | None) -> None:
        if not self.ready.done():
            error: BaseException
            if self._peer_end is not None:
                error = HandshakeError(self._peer_end.get("m"))
            elif exc is not None:
                error = exc
            else:
                error = ConnectionClosedError(reason)
            self.ready.set_exception(error)
        self.client._on_lost(self, reason)

    def _report(self, exc: BaseException) -> None:
        self.client._report(exc)


class Subscription:
    """Messages of one topic as an async iterator (see ``IPCClient.subscription``)."""

    def __init__(self, client: IPCClient, topic: str, maxsize: int = 0) -> None:
        self.client = client
        self.topic = topic
        self._queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize)

    def _put(self, message: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((True, message))

    def _end(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((False, None))

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        more, message = await self._queue.get()
        if not more:
            self._queue.put_nowait((False, None))  # stay ended
            raise StopAsyncIteration
        return message

    async def get(self, timeout: float | None = None) -> Any:
        """The next message; raises ``TimeoutError`` after ``timeout`` seconds (None: forever)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ConnectionClosedError("client closed") from None


class IPCClient(EventEmitter):
    """An IPC client.

    Events: ``ready(info)``, ``error(error)``, ``close(reason)`` (closed for
    good), ``status(status)``, ``message(message)``, ``request(request,
    respond)``, and one event per subscribed topic (``handler(message)``).

    Args:
        path: The server's Unix socket path or name, or Windows pipe name
            (see Addresses in docs/guide.md).
        host: The server's TCP host (selects TCP).
        port: The server's TCP port.
        ssl: An ``ssl.SSLContext`` for TLS over TCP.
        handshake: Open with the HTTP upgrade preamble (for proxies).
        upgrade_token: The ``Upgrade:`` token; ``"net-ipc"`` to reach a net-ipc server.
        reconnect: Reconnect after an unexpected disconnect.
        retries: Reconnect attempts before giving up (and emitting ``close``).
        max_retry_time: Cap on the delay between attempts, in seconds.
        connect_timeout: Bound on connecting plus the CONNECTION exchange.
        codec: ``"json"`` or ``"msgpack"`` (asked for; used if the server agrees).
        compress: Ask for compression.
        max_message_size: Largest packet body accepted, before and after inflating.
        max_queued: Bytes that may queue unsent before the connection is dropped.
        request_timeout: Default timeout of ``request`` and ``ping``.
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
        max_queued: int = DEFAULT_MAX_QUEUED,
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
        self.max_queued = max_queued
        self.request_timeout = request_timeout
        self.id: str | None = None
        """The id the server assigned; kept across reconnects."""
        self.status = IPCClientStatus.IDLE
        self.info: dict[str, Any] = {}
        """What the server answered in the CONNECTION exchange (id, compress, messagepack)."""
        self._nonces = itertools.count(1)
        self._payload: Any = None
        self._proto: _ClientProtocol | None = None
        self._live: _ClientProtocol | None = None  # _proto while READY, else None
        self._closed = True  # closed for good (or never connected)
        self._topics: dict[str, None] = {}  # topics to restore after a reconnect
        self._sub_refs: dict[str, int] = {}  # live subscription() contexts per topic
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._close_reason: Any = None
        self._finished = True  # close was emitted (or there was nothing to close)

    def __repr__(self) -> str:
        return f"<IPCClient {self.address} id={self.id!r} status={self.status.name}>"

    # ------------------------------------------------------------------ status

    def _set_status(self, status: IPCClientStatus) -> None:
        # The live endpoint, read by send() and request() without an enum lookup.
        self._live = self._proto if status is IPCClientStatus.READY else None
        if status is self.status:
            return
        self.status = status
        self.emit("status", status)

    @property
    def is_ready(self) -> bool:
        """Whether the client can send now."""
        return self.status is IPCClientStatus.READY

    def _report(self, exc: BaseException) -> None:
        if not self.emit("error", exc):
            from .events import logger

            logger.warning("ipc_server client: %s", exc)

    # ------------------------------------------------------------------ connecting

    async def connect(self, payload: Any = None) -> IPCClient:
        """Connect and run the CONNECTION exchange; ``payload`` reaches the server's ``connect``.

        One attempt, bounded by ``connect_timeout``; reconnects happen only
        after a connection was established.

        Raises:
            HandshakeError: The server refused the client (authentication,
                max_connections) or answered with something else.
            TimeoutError: Not connected within ``connect_timeout``.
            OSError: No server there (``ConnectionRefusedError``, ``FileNotFoundError``).
        """
        if self.status is not IPCClientStatus.IDLE or not self._closed:
            raise RuntimeError(f"connect() needs an idle client; status is {self.status.name}")
        self._payload = payload
        self._closed = False
        self._finished = False
        self._close_reason = None
        try:
            await self._open()
        except BaseException:
            self._closed = True
            self._set_status(IPCClientStatus.IDLE)
            raise
        return self

    async def _open(self) -> None:
        self._set_status(IPCClientStatus.CONNECTING)
        loop = asyncio.get_running_loop()
        seconds = deadline_of(self.connect_timeout)
        deadline = None if seconds is None else loop.time() + seconds
        proto: _ClientProtocol | None = None
        try:
            _, p = await open_transport(
                lambda: _ClientProtocol(self), self.address, ssl=self.ssl, timeout=seconds
            )
            assert isinstance(p, _ClientProtocol)
            proto = p
            self._proto = proto
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            info = await asyncio.wait_for(asyncio.shield(proto.ready), remaining)
        except BaseException:
            if proto is not None:
                proto._abort()
                if self._proto is proto:
                    self._proto = None
            raise
        if proto._transport is None:
            raise ConnectionClosedError("connection lost during the handshake")
        self.info = info
        if isinstance(info.get("id"), str):
            self.id = info["id"]
        if self._topics:
            # After a reconnect: subscriptions are back before anyone hears "ready".
            remaining = None if deadline is None else max(0.001, deadline - loop.time())
            try:
                await proto.request(request_subscribe(list(self._topics)), remaining)
            except IPCError as exc:
                self._report(exc)
        self._set_status(IPCClientStatus.READY)
        for waiter in self._ready_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._ready_waiters.clear()
        self.emit("ready", info)

    def _on_lost(self, proto: _ClientProtocol, reason: Any) -> None:
        if proto is not self._proto:
            return  # a failed attempt; _open reports it
        self._proto = None
        was_ready = proto._handshaken
        self._set_status(IPCClientStatus.DISCONNECTED)
        end = proto._peer_end
        if not was_ready or self._closed:
            if self._closed:
                self._finish(reason)
            return
        if end is not None and not end.get("a"):
            self._finish(end.get("m"))  # the server closed us for good
            return
        if proto._destroyed or proto._closing:
            self._finish(reason)
            return
        if not self.reconnect or self.retries == 0:
            self._finish(reason)
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop(reason))

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, self.max_retry_time)

    async def _reconnect_loop(self, reason: Any) -> None:
        last: Any = reason
        try:
            for attempt in range(1, self.retries + 1):
                self._set_status(IPCClientStatus.RECONNECTING)
                await asyncio.sleep(self._backoff(attempt))
                if self._closed:
                    return
                try:
                    await self._open()
                except HandshakeError as exc:
                    last = exc
                    break  # refused: retrying will not help
                except (OSError, asyncio.TimeoutError, TimeoutError, IPCError) as exc:
                    last = exc
                    self._set_status(IPCClientStatus.DISCONNECTED)
                    continue
                return
            self._finish(last)
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    def _finish(self, reason: Any) -> None:
        """Closed for good: fail waiters, end subscriptions, emit ``close(reason)``."""
        first = not self._finished
        self._finished = True
        self._closed = True
        self._close_reason = reason
        error = ConnectionClosedError(reason)
        for waiter in self._ready_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._ready_waiters.clear()
        for subs in self._subscriptions.values():
            for sub in subs:
                sub._end()
        self._set_status(IPCClientStatus.IDLE)
        if first:
            self.emit("close", reason)

    async def _endpoint(self, timeout: float | None) -> _ClientProtocol:
        """The live connection, waiting (bounded) while a reconnect is under way.

        Raises:
            ConnectionClosedError: The client is closed for good (or closes while waiting).
            RequestTimeoutError: Not reconnected within ``timeout`` seconds.
        """
        proto = self._live
        if proto is not None:
            return proto
        if self._closed:
            raise ConnectionClosedError(
                self._close_reason if self._close_reason is not None else "client is not connected"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(waiter)
        seconds = deadline_of(timeout)
        try:
            await asyncio.wait_for(waiter, seconds)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestTimeoutError(seconds or 0.0, "waiting for the reconnect") from None
        assert self._proto is not None
        return self._proto

    async def _ready_endpoint(self, timeout: float | None) -> tuple[_ClientProtocol, float | None]:
        """The live connection and what is left of ``timeout`` after waiting for it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        proto = await self._endpoint(timeout)
        seconds = deadline_of(timeout)
        if seconds is None:
            return proto, None
        return proto, max(0.001, seconds - (loop.time() - started))

    def _timeout(self, timeout: float | Default | None) -> float | None:
        return self.request_timeout if timeout is DEFAULT else timeout

    # ------------------------------------------------------------------ operations

    async def send(self, data: Any) -> None:
        """Send a one-way message (the server's ``message`` event)."""
        proto = self._live
        if proto is None:
            proto = await self._endpoint(self.connect_timeout)
        # Endpoint.send without its coroutine frame (one less per message).
        if proto._queue_message(data):
            await proto._drain()

    async def request(self, data: Any, timeout: float | Default | None = DEFAULT) -> Any:
        """Send a request and return the server's answer.

        Args:
            data: The request (anything the codec can encode).
            timeout: Seconds to wait for the answer (default: ``request_timeout``,
                10 s; 0 or None: forever). While the client is reconnecting,
                the wait for the connection counts against it.

        Raises:
            RequestTimeoutError: No answer in time.
            ConnectionClosedError: The connection closed before the answer came.
            RemoteError: The server's handler raised.
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        proto = self._live
        if proto is None:
            proto, timeout = await self._ready_endpoint(timeout)
        # Inlined Endpoint.request (one coroutine frame less per request).
        nonce, future = proto._start_request(REQUEST, data, timeout)
        if proto._write_paused:
            await proto._drain()
        try:
            return await future
        except asyncio.CancelledError:
            proto._forget(nonce)
            raise

    async def ping(self, data: Any = None, timeout: float | Default | None = DEFAULT) -> float:
        """Round trip to the server in seconds (the server echoes ``data``)."""
        timeout = self._timeout(timeout)
        proto = self._live
        if proto is None:
            proto, timeout = await self._ready_endpoint(timeout)
        latency: float = await proto.ping(data, timeout)
        return latency

    # ------------------------------------------------------------------ pub/sub

    async def subscribe(
        self, topic: str | list[str], *, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Subscribe to a topic (or several); messages are emitted under the topic's name."""
        topics = topic_list(topic)
        ok = succeeded(await self.request(request_subscribe(topic), timeout))
        if ok:
            for t in topics:
                self._topics[t] = None
        return ok

    async def unsubscribe(
        self, topic: str | list[str], *, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Unsubscribe; False when it was not subscribed."""
        for t in topic_list(topic):
            self._topics.pop(t, None)
        return succeeded(await self.request(request_unsubscribe(topic), timeout))

    async def publish(
        self, topic: str, message: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Publish ``message`` to every subscriber of ``topic`` (through the server)."""
        return succeeded(await self.request(request_publish(topic, message), timeout))

    @property
    def topics(self) -> list[str]:
        """Topics this client is subscribed to (restored after a reconnect)."""
        return list(self._topics)

    def _on_published(self, topic: str, message: Any) -> None:
        subs = self._subscriptions.get(topic)
        if subs:
            for sub in subs:
                sub._put(message)
        if topic not in RESERVED_EVENTS:
            # A topic named like a built-in event ("close", "error", ...) would
            # fire that event's listeners; such topics reach subscription() only.
            solo = self._solo.get(topic)  # the fanout hot path: one listener, no chain
            if solo is not None:
                self._run_one(topic, solo, (message,))
            else:
                self.emit(topic, message)

    @contextlib.asynccontextmanager
    async def subscription(self, topic: str, *, maxsize: int = 0) -> AsyncIterator[Subscription]:
        """Subscribe on entry and yield an async iterator of the topic's messages.

        On exit it unsubscribes, unless the topic is still wanted elsewhere
        (another live ``subscription()`` or an explicit ``subscribe``).
        ``maxsize`` bounds the queue (0: unbounded; when full, new messages are dropped).
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        sub = Subscription(self, topic, maxsize)
        explicit = topic in self._topics and not self._sub_refs.get(topic)
        # Registered before subscribing: a message published right after the
        # server's answer (even in the same read) reaches the iterator.
        self._sub_refs[topic] = self._sub_refs.get(topic, 0) + 1
        self._subscriptions.setdefault(topic, []).append(sub)
        try:
            if topic not in self._topics and not await self.subscribe(topic):
                raise IPCError(f"server refused the subscription to {topic!r}")
            yield sub
        finally:
            self._subscriptions[topic].remove(sub)
            if not self._subscriptions[topic]:
                del self._subscriptions[topic]
            self._sub_refs[topic] -= 1
            if not self._sub_refs[topic]:
                del self._sub_refs[topic]
                if not explicit and self.is_ready and topic in self._topics:
                    with contextlib.suppress(IPCError):
                        await self.unsubscribe(topic)

    # ------------------------------------------------------------------ closing

    async def close(self, reason: Any = None, *, timeout: float | None = 10.0) -> bool:
        """Close gracefully: queued writes flushed, pending requests answered first.

        Emits ``close(reason)``. Returns False if it was not connected.
        """
        if self._closed:
            return False
        self._closed = True
        task = self._reconnect_task
        if task is not None:
            task.cancel()
            self._reconnect_task = None
        proto = self._proto
        if proto is not None:
            await proto.close(reason, False, timeout=timeout)
        self._finish(reason)
        return True

    def destroy(self, reason: Any = None) -> bool:
        """Close at once: pending requests fail with ConnectionDestroyedError; emits ``close``."""
        if self._closed:
            return False
        self._closed = True
        task = self._reconnect_task
        if task is not None:
            task.cancel()
            self._reconnect_task = None
        proto = self._proto
        if proto is not None:
            proto.destroy(reason)
        self._finish(reason)
        return True

    async def __aenter__(self) -> IPCClient:
        if self._closed and self.status is IPCClientStatus.IDLE:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
