"""IPCClient, the asyncio front (docs/guide.md): connecting, waiting and reconnecting.

The rules (options, statuses, what a loss leads to, the topics registry)
are ``clientcore.ClientCore``'s; the connection is an ``endpoint.Endpoint``.
This module adds what only asyncio does: the tasks, futures and timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from .calls import Calls
from .clientcore import IPCClientStatus, connect_error
from .endpoint import Endpoint, Responder
from .errors import (
    ConnectionClosedError,
    HandshakeError,
    IPCError,
    ProtocolError,
    RequestTimeoutError,
)
from .events import EventEmitter, Tasks, settle
from .listeners import ClientEvents
from .options import (
    DEFAULT,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_TIMEOUT,
    AsyncClientOptions,
    Default,
    check_timeout,
)
from .packets import (
    CALL,
    SERVICES,
    STATS,
    Agreement,
    read_answer,
    subscribe_request,
    succeeded,
    unsubscribe_request,
)
from .pending import Unanswered
from .protocol import (
    BINARY_PREAMBLE,
    DEFAULT_MAX_HANDSHAKE_SIZE,
    ClientPreamble,
    upgrade_request,
)
from .subscriptions import SubscriptionBase
from .transport import PeerCredentials, peer_credentials
from .transport import connect as open_transport

__all__ = ["IPCClient", "IPCClientStatus", "Subscription"]


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Nobody may be left to await a failed handshake: its error is not "never retrieved".
    if not future.cancelled():
        future.exception()


def _left(deadline: float | None, floor: float = 0.0) -> float | None:
    if deadline is None:
        return None
    return max(floor, deadline - asyncio.get_running_loop().time())


class _ClientProtocol(Endpoint):
    """The client's end of one connection attempt."""

    def __init__(
        self,
        client: IPCClient,
        hello: bytes,
        nonces: Iterator[int],
        on_message: Callable[[Any], None],
    ) -> None:
        super().__init__(
            max_message_size=client.max_message_size,
            max_packet_objects=client.max_packet_objects,
            max_queued=client.max_queued,
            nonces=nonces,
        )
        # The server's CONNECTION answer is small; what it sends after may be big.
        if client.max_message_size > DEFAULT_MAX_HANDSHAKE_SIZE:
            self._decoder.limit_first(DEFAULT_MAX_HANDSHAKE_SIZE, "max_handshake_size")
        self.client = client
        self._resends = True
        # The client's own rule, called straight from the receive path (one call less per message).
        self._on_message = on_message  # type: ignore[method-assign,assignment]
        self._hello = hello
        self._preamble = ClientPreamble() if client.handshake else None
        self.ready: asyncio.Future[Agreement] = self.loop.create_future()
        self.ready.add_done_callback(_retrieve)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.client
        try:
            client._connection_opened(peer_credentials(transport))
        except HandshakeError as exc:  # not the server it should be: it gets nothing
            self._fail_ready(exc)
            self.destroy()
            return
        assert self._transport is not None
        if self._preamble is not None:
            host = client.address.host or client.upgrade_token
            self._transport.write(upgrade_request(host, client.upgrade_token))
        else:
            self._transport.write(BINARY_PREAMBLE + self._hello)
            self._packets_out += 1
            self._bytes_out += len(self._hello) + len(BINARY_PREAMBLE)

    def _on_preamble(self, data: bytes) -> bytes | None:
        preamble = self._preamble
        if preamble is None:
            return data
        try:
            consumed = preamble.feed(data)
        except ProtocolError as exc:
            self._fail_ready(HandshakeError(str(exc)))
            self.destroy()
            return None
        if consumed is None:
            return None
        self._preamble = None
        assert self._transport is not None
        self._transport.write(self._hello)
        self._packets_out += 1
        self._bytes_out += len(self._hello)
        return bytes(preamble.data[consumed:])

    def _on_connection_packet(self, t: int, d: Any, n: Any) -> None:
        try:
            agreement = read_answer(t, d)
        except HandshakeError as exc:
            self._peer_end = {"m": exc.reason, "a": False}
            self._fail_ready(exc)
            return
        except ProtocolError as exc:
            self._fatal(exc)
            return
        self._codec.configure(messagepack=agreement.messagepack, compress=agreement.compress)
        self._agreed(agreement.features, agreement.timeouts)
        self._handshaken = True
        if not self.ready.done():
            self.ready.set_result(agreement)

    def _fail_ready(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)

    def _on_request(self, data: Any, respond: Responder) -> None:
        self.client._request_arrived(data, respond, self._tasks)

    def _on_request_extension(
        self, x: Any, packet: dict[str, Any], n: str, respond: Responder
    ) -> bool:
        if x == CALL and SERVICES in self.features:
            self.client._call_arrived(packet.get("s"), packet.get("d"), respond, self._tasks)
            return True
        return False

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
        ended_here = self._destroyed or self._closing
        self.client._connection_lost(self, reason, self._handshaken, self._peer_end, ended_here)

    def _report(self, exc: BaseException) -> None:
        self.client._connection_error(exc)


class Subscription(SubscriptionBase):
    """Messages of one topic as an async iterator (see ``IPCClient.subscription``).

    ``async for message in sub`` ends when the client closes for good;
    ``get`` waits at most ``timeout`` seconds.
    """

    def __init__(self, client: IPCClient, topic: str, maxsize: int = 0) -> None:
        super().__init__(client, topic, maxsize)
        self._arrived = asyncio.Event()

    def _wake(self) -> None:
        self._arrived.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        while True:
            item = self._box.take()
            if item is not None:
                more, message = item
                if not more:
                    raise StopAsyncIteration
                self._took()
                return message
            self._arrived.clear()
            await self._arrived.wait()

    async def get(self, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """The next message.

        Raises:
            TimeoutError: None within ``timeout`` seconds (0/None: wait forever).
            ConnectionClosedError: The client closed for good.
        """
        limit = check_timeout(timeout)
        try:
            return await asyncio.wait_for(self.__anext__(), limit)
        except StopAsyncIteration:
            raise ConnectionClosedError("client closed") from None
        except asyncio.TimeoutError:  # not the builtin TimeoutError on 3.10
            raise TimeoutError(f"no message on {self.topic!r} within {limit:g} s") from None


class IPCClient(AsyncClientOptions, Calls, ClientEvents):
    """An IPC client for asyncio.

    Events: ``ready(info)``, ``error(error)``, ``close(reason)`` (closed for
    good), ``status(status)``, ``message(message)``, ``request(request,
    respond)``, and one event per subscribed topic (``handler(message)``).

    The keyword options are those of
    [`ClientOptions`][ipc_server.options.ClientOptions] plus ``max_queued``
    ([`AsyncClientOptions`][ipc_server.options.AsyncClientOptions]), described
    there (docs/guide.md lists the limits with their defaults).
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        self._proto: _ClientProtocol | None = None
        self._live: _ClientProtocol | None = None  # _proto while READY, else None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._unanswered: list[Unanswered] = []

    # ------------------------------------------------------------------ ClientCore's hooks

    _emit = EventEmitter.emit  # listeners run here and now (no frame of its own per event)

    def _wake_waiters(self, error: BaseException | None) -> None:
        waiters = self._ready_waiters
        self._ready_waiters = []
        settle(waiters, error)

    def _connection_stats(self) -> dict[str, Any] | None:
        proto = self._live
        return None if proto is None else proto.stats()

    def _hold_events(self, hold: bool) -> None:
        proto = self._proto
        if proto is not None:
            if hold:
                proto.hold_reading("events")
            else:
                proto.release_reading("events")

    def _set_status(self, status: IPCClientStatus) -> None:
        # The live connection, read by send() and request() without an enum lookup.
        self._live = self._proto if status is IPCClientStatus.READY else None
        super()._set_status(status)

    # ------------------------------------------------------------------ what the connection tells

    def _connection_opened(self, peer: PeerCredentials | None) -> None:
        self._check_server(peer)
        self._set_status(IPCClientStatus.CONNECTED)

    def _request_arrived(self, data: Any, respond: Responder, tasks: Tasks) -> None:
        self.emit_request("request", (data, respond), respond, tasks)

    def _call_arrived(self, name: Any, data: Any, respond: Responder, tasks: Tasks) -> None:
        """The server sent a call of service ``name``: its handler answers it."""
        handler = self._service_handler(name)
        if handler is None:
            # Unserved while the server sent it: the caller learns that nobody serves it.
            respond.fail(self._not_served(name), own=True)
            return
        self._run_chain(f"service {name!r}", [handler], (data, respond), respond, tasks)

    def _connection_error(self, exc: BaseException) -> None:
        self._report(exc)

    def _connection_lost(
        self,
        proto: _ClientProtocol,
        reason: Any,
        admitted: bool,
        peer_end: dict[str, Any] | None,
        ended_here: bool,
    ) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        if not admitted:
            return  # an attempt that failed: _open raises, and its caller decides
        # Requests the server did not run before its END: sent again once reconnected.
        self._unanswered.extend(proto.unanswered)
        reconnect, reason = self._after_loss(peer_end, reason, ended_here)
        if reconnect:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect(reason))
        else:
            self._finish(reason)

    # ------------------------------------------------------------------ connecting

    async def connect(
        self, payload: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> IPCClient:
        """Connect and run the CONNECTION exchange; ``payload`` reaches the server's ``connect``.

        One attempt, bounded by ``timeout`` (default: ``connect_timeout``);
        reconnects happen only after a connection was established.

        Raises:
            HandshakeError: The server refused the client (authentication,
                max_connections) or answered with something else.
            TimeoutError: Not connected within the timeout.
            OSError: No server there (``ConnectionRefusedError``, ``FileNotFoundError``).
        """
        self._begin_connect(payload)
        try:
            await self._open(self.connect_timeout if timeout is DEFAULT else timeout)
        except BaseException:
            self._connect_failed()
            raise
        return self

    async def _open(self, timeout: float | None) -> None:
        self._set_status(IPCClientStatus.CONNECTING)
        limit = check_timeout(timeout)
        deadline = None if limit is None else asyncio.get_running_loop().time() + limit
        proto = _ClientProtocol(self, self._hello(), self._nonces, self._message_arrived)
        self._proto = proto
        try:
            await open_transport(lambda: proto, self.address, ssl=self.ssl, timeout=limit)
            agreement = await asyncio.wait_for(asyncio.shield(proto.ready), _left(deadline))
        except BaseException as exc:
            proto.destroy()
            if self._proto is proto:
                self._proto = None
            error = connect_error(self.address, exc, limit)
            if error is exc:
                raise
            raise error from exc
        if proto.closed:
            raise ConnectionClosedError("connection lost during the handshake")
        restore = self._admitted(agreement)
        if restore:
            # After a reconnect: subscriptions and services are back before anyone hears "ready".
            left = _left(deadline, 0.001)
            answers = await asyncio.gather(
                *(
                    proto.request(data, left)
                    if fields is None
                    else proto.extended_request(data, fields, left)
                    for data, fields in restore
                ),
                return_exceptions=True,
            )
            for answer in answers:
                if isinstance(answer, IPCError):
                    self._report(answer)
                elif isinstance(answer, BaseException):
                    raise answer
            if self._proto is not proto:
                return  # lost again: its loss has been dealt with (reconnecting or closed)
        if self._full:
            proto.hold_reading("events")  # what the last connection left is still to be taken
        self._ready()
        self._send_unanswered(proto)

    def _send_unanswered(self, proto: _ClientProtocol) -> None:
        """Send again, on the new connection, what the last one's END left unanswered."""
        waiting = self._unanswered
        self._unanswered = []
        for unanswered in waiting:
            if not unanswered[0].done():  # else given up on meanwhile
                proto.resend(unanswered)

    def _finish(self, reason: Any) -> None:
        super()._finish(reason)
        waiting = self._unanswered
        self._unanswered = []
        for pending, _, _, _ in waiting:
            if not pending.done():
                pending.set_exception(ConnectionClosedError(reason, executed=False))

    async def _reconnect(self, reason: Any) -> None:
        last: Any = reason
        try:
            for delay in self._retry_delays():
                await asyncio.sleep(delay)
                try:
                    await self._open(self.connect_timeout)
                except Exception as exc:  # OSError, TimeoutError, IPCError, ...
                    last = exc
                    if self._attempt_failed(exc):
                        continue
                    break
                return
            self._finish(last)
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    async def _connection(self, timeout: float | None) -> tuple[_ClientProtocol, float | None]:
        """The live connection, waiting (bounded) while a reconnect is under way,
        and what is left of ``timeout``.

        Raises:
            ConnectionClosedError: The client is closed for good (or closes while waiting).
            RequestTimeoutError: Not reconnected within ``timeout`` seconds.
        """
        proto = self._live
        if proto is not None:
            return proto, timeout
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        self._ready_waiters.append(waiter)
        limit = check_timeout(timeout)
        try:
            await asyncio.wait_for(waiter, limit)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestTimeoutError(limit or 0.0, "waiting for the reconnect") from None
        proto = self._live
        if proto is None:
            raise self._closed_error()
        if limit is None:
            return proto, None
        return proto, max(0.001, limit - (loop.time() - started))

    # ------------------------------------------------------------------ operations

    async def send(self, data: Any, *, timeout: float | Default | None = DEFAULT) -> None:
        """Send a one-way message (the server's ``message`` event).

        Waits only while the connection is over its write high-water mark (or
        reconnecting), at most ``timeout`` seconds (default: ``request_timeout``).
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        proto = self._live
        if proto is None:
            proto, timeout = await self._connection(timeout)
        if proto.send_nowait(data):
            await proto.drain(timeout=timeout)

    # request and ping are plain functions: on the loop's thread, with the client READY,
    # they return the connection's Pending (a future and a coroutine, no Task per call).

    def request(
        self, data: Any, timeout: float | Default | None = DEFAULT
    ) -> Coroutine[Any, Any, Any]:
        """Send a request; ``await`` the result for the server's answer.

        The request is sent when ``request`` is called (while the client is
        connected; while it reconnects, once it is back). What it returns is a
        future that is also a coroutine: ``await`` it, ``asyncio.gather`` many
        (no task per request), or hand it to ``create_task``.

        Args:
            data: The request (anything the codec can encode).
            timeout: Seconds to wait for the answer (default: ``request_timeout``,
                10 s; 0 or None: forever). While the client is reconnecting,
                the wait for the connection counts against it.

        Raises (when awaited):
            RequestTimeoutError: No answer in time.
            ConnectionClosedError: The connection closed before the answer came.
            RemoteError: The server's handler raised.
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        proto = self._live
        if proto is not None:
            try:
                if asyncio.get_running_loop() is proto.loop:
                    return proto.request(data, timeout)
            except RuntimeError:
                pass  # another thread: the call runs when the coroutine runs, on the loop
        return self._request_later(data, timeout)

    async def _request_later(self, data: Any, timeout: float | None) -> Any:
        # Reconnecting, or called from another thread (run_coroutine_threadsafe):
        # the request starts when this coroutine runs, on the loop.
        proto, timeout = await self._connection(timeout)
        return await proto.request(data, timeout)

    def ping(
        self, data: Any = None, timeout: float | Default | None = DEFAULT
    ) -> Coroutine[Any, Any, float]:
        """Round trip to the server: ``await`` it for the seconds (the server echoes ``data``)."""
        if timeout is DEFAULT:
            timeout = self.request_timeout
        proto = self._live
        if proto is not None:
            try:
                if asyncio.get_running_loop() is proto.loop:
                    return proto.ping(data, timeout)
            except RuntimeError:
                pass  # another thread: the call runs when the coroutine runs, on the loop
        return self._ping_later(data, timeout)

    async def _ping_later(self, data: Any, timeout: float | None) -> float:
        proto, timeout = await self._connection(timeout)
        latency: float = await proto.ping(data, timeout)
        return latency

    async def server_stats(
        self, *, connections: bool = False, timeout: float | Default | None = DEFAULT
    ) -> dict[str, Any]:
        """The server's ``stats()`` (what ``ipc-server stats`` shows), if it answers this client.

        ``connections=True`` adds each connection's own stats. A server answers
        peers of its own uid over a Unix socket by default (its ``allow_stats``).

        Raises:
            RemoteError: The server does not answer this peer (``PermissionError``).
            IPCError: The server does not answer stats requests at all (not a server
                of this library).
        """
        if timeout is DEFAULT:
            timeout = self.request_timeout
        proto = self._live
        if proto is None:
            proto, timeout = await self._connection(timeout)
        if STATS not in proto.features:
            raise self._stats_unsupported()
        result: dict[str, Any] = await proto.server_stats(connections, timeout)
        return result

    # ------------------------------------------------------------------ pub/sub

    async def subscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = None,
        timeout: float | Default | None = DEFAULT,
    ) -> bool:
        """Subscribe to a topic or pattern (or several); messages are emitted under its name.

        A pattern's ``*`` matches one ``.``-separated token, a last ``>`` one or
        more: its listeners are called ``listener(message, topic)``. With
        ``group``, this client joins that worker group: each message goes to
        one member of the group (and to every plain subscriber).

        Raises:
            ValueError: An invalid topic or pattern (``a..b``, ``a.>.b``, ``*x``).
            IPCError: The server cannot match patterns or has no groups (a Node server).
        """
        reply = await self.request(self._subscribe_request(topic, group), timeout)
        return self._subscribe_done(topic, reply, group=group)

    async def unsubscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = None,
        timeout: float | Default | None = DEFAULT,
    ) -> bool:
        """Unsubscribe (from ``group``'s subscription, if given); False when it was not subscribed."""
        return succeeded(await self.request(self._unsubscribe_request(topic, group), timeout))

    async def publish(
        self, topic: str, message: Any = None, *, timeout: float | Default | None = DEFAULT
    ) -> bool:
        """Publish ``message`` to every subscriber of ``topic`` (through the server)."""
        return succeeded(await self.request(self._publish_request(topic, message), timeout))

    @contextlib.asynccontextmanager
    async def subscription(
        self, topic: str, *, maxsize: int = 0, timeout: float | Default | None = DEFAULT
    ) -> AsyncIterator[Subscription]:
        """Subscribe on entry and yield an async iterator of the topic's messages.

        On exit it unsubscribes, unless the topic is still wanted elsewhere
        (another live ``subscription()`` or an explicit ``subscribe``).
        ``maxsize`` bounds the queue (0: unbounded; when full, new messages
        are dropped). ``timeout`` bounds the subscribe and unsubscribe requests.
        """
        sub = Subscription(self, self._subscription_topic(topic), maxsize)
        registry = self._registry
        try:
            if registry.open(sub):
                reply = await self.request(subscribe_request(topic), timeout)
                if not self._subscribe_done(topic, reply, explicit=False):
                    raise IPCError(f"server refused the subscription to {topic!r}")
            yield sub
        finally:
            if registry.close(sub) and self.is_ready:
                with contextlib.suppress(IPCError):
                    await self.request(unsubscribe_request(topic), timeout)

    # ------------------------------------------------------------------ closing

    def _cancel_reconnect(self) -> None:
        task = self._reconnect_task
        if task is not None:
            task.cancel()
            self._reconnect_task = None

    async def close(
        self, reason: Any = None, *, timeout: float | None = DEFAULT_CLOSE_TIMEOUT
    ) -> bool:
        """Close gracefully: queued writes flushed, pending requests answered first.

        Waits at most ``timeout`` seconds, then drops the connection. Emits
        ``close(reason)``. Returns False if it was not connected.
        """
        if not self._begin_close():
            return False
        self._cancel_reconnect()
        proto = self._proto
        if proto is not None:
            await proto.close(reason, False, timeout=timeout)
        self._finish(reason)
        return True

    def destroy(self, reason: Any = None) -> bool:
        """Close at once: pending requests fail with ConnectionDestroyedError; emits ``close``.

        Also ends a ``close()`` under way. Returns False once closed for good.
        """
        if not self._begin_destroy():
            return False
        self._cancel_reconnect()
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
