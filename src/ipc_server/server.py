"""IPCServer and IPCConnection (docs/guide.md).

The server accepts connections, runs the preamble and CONNECTION exchange
(with the handshake timeout and the optional ``authenticate`` check), keeps
the registry of live connections and the topic registry, and offers
``publish`` / ``broadcast`` / ``survey`` / ``ping`` over all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import InitVar, dataclass, field
from typing import Any

from .address import Address
from .codecs import DEFAULT_MAX_PACKET_OBJECTS, CodecName
from .endpoint import Endpoint, Responder
from .errors import HandshakeError, ProtocolError
from .events import EventEmitter, start_task
from .options import (
    DEFAULT_MAX_QUEUED,
    DEFAULT_TIMEOUT,
    check_codec,
    check_size,
    check_timeout,
    checked_address,
)
from .packets import (
    MESSAGE,
    PUBSUB_KEYS,
    Hello,
    answer,
    delivery,
    end,
    pubsub_reply,
    read_hello,
    read_pubsub,
    topic_list,
)
from .protocol import DEFAULT_MAX_HANDSHAKE_SIZE, DEFAULT_MAX_MESSAGE_SIZE, ServerPreamble
from .transport import Listener, PeerCredentials, listen, peer_credentials

__all__ = ["SERVER_CLOSED", "Authenticate", "IPCConnection", "IPCServer", "ServerOptions"]

logger = logging.getLogger("ipc_server")

SERVER_CLOSED = "server closed"


Authenticate = Callable[[Any, "IPCConnection"], "bool | str | Awaitable[bool | str | None] | None"]
"""``fn(payload, connection)``, plain or async: True/None admits, False or a reason refuses."""


@dataclass(kw_only=True, eq=False, repr=False)
class ServerOptions:
    """The options of ``IPCServer`` (asyncio) and ``ipc_server.sync.IPCServer``.

    Args:
        path: Unix socket path or name (docs/guide.md, Addresses); Windows pipe name.
        host: TCP host (selects TCP).
        port: TCP port (0 picks a free one; see ``port`` of the started server).
        ssl: An ``ssl.SSLContext`` for TLS over TCP.
        max_connections: Refuse clients beyond this many (None: no limit).
        handshake_timeout: Seconds a new connection has to finish the
            CONNECTION exchange (0/None: forever).
        max_message_size: Largest packet body accepted, before and after inflating.
        max_handshake_size: Largest packet body accepted before the client is
            admitted (its CONNECTION packet), refused from its length tag.
        max_packet_objects: Most containers (dicts and lists) one packet may
            hold, counted before or while it is decoded; more closes the connection.
        max_queued: Bytes that may queue for one client that does not read
            before it is disconnected.
        socket_mode: File mode of the Unix socket (None leaves it to the umask).
        id_factory: Makes connection ids (default: 16 random hex digits).
        codec: ``"msgpack"`` (agree to msgpack when a client asks) or ``"json"`` (decline).
        compress: Agree to compression when a client asks.
        authenticate: ``fn(payload, connection)`` (plain or async) called
            before a client is admitted: return True/None to admit, False or a
            reason string to refuse (the client gets END with the reason).
        max_concurrent_requests: Request handlers of one connection that may be
            running (suspended in a task) at once; at the bound the server stops
            reading that connection until one ends (backpressure; None: no bound).
        cancel_on_disconnect: Cancel the running handlers of a connection that
            is lost (their ``respond`` does nothing by then).
        retries: Accepted for net-ipc compatibility; unused (a server does not reconnect).
    """

    path: InitVar[str | None] = None
    host: InitVar[str | None] = None
    port: InitVar[int | None] = None
    ssl: _ssl.SSLContext | None = None
    max_connections: int | None = None
    handshake_timeout: float | None = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_handshake_size: int = DEFAULT_MAX_HANDSHAKE_SIZE
    max_packet_objects: int = DEFAULT_MAX_PACKET_OBJECTS
    max_queued: int = DEFAULT_MAX_QUEUED
    socket_mode: int | None = 0o600
    id_factory: Callable[[], str] | None = None
    codec: CodecName = "msgpack"
    compress: bool = True
    authenticate: Authenticate | None = None
    max_concurrent_requests: int | None = 256
    cancel_on_disconnect: bool = True
    retries: int = 3
    address: Address = field(init=False)
    """The address as configured (``bound_address`` tells where a started server listens)."""

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        self.address = checked_address(path, host, port, self.ssl)
        check_codec(self.codec)
        if self.max_connections is not None:
            check_size("max_connections", self.max_connections)
        if self.max_concurrent_requests is not None:
            check_size("max_concurrent_requests", self.max_concurrent_requests)
        check_size("max_message_size", self.max_message_size)
        check_size("max_handshake_size", self.max_handshake_size)
        check_size("max_packet_objects", self.max_packet_objects)
        check_size("max_queued", self.max_queued)
        check_timeout(self.handshake_timeout)


def _default_id() -> str:
    return secrets.token_hex(8)


class IPCConnection(Endpoint):
    """One client's connection, seen from the server.

    Attributes:
        id: The connection id (kept by a reconnecting client).
        server: The server it belongs to.
        connected_at: ``time.time()`` when the CONNECTION exchange finished.
        peer: pid/uid/gid of the client process where the OS tells (Unix
            sockets, Windows pipes: pid only); None for TCP.
        payload: What the client passed to ``connect()``.
        topics: Topics this connection is subscribed to.
    """

    def __init__(self, server: IPCServer) -> None:
        super().__init__(
            max_message_size=server.max_message_size,
            max_packet_objects=server.max_packet_objects,
            max_queued=server.max_queued,
            max_concurrent=server.max_concurrent_requests,
            hold_while_paused=True,
            cancel_on_lost=server.cancel_on_disconnect,
        )
        self.server = server
        self.id: str = server._new_id()
        self.connected_at: float | None = None
        self.peer: PeerCredentials | None = None
        self.payload: Any = None
        self.topics: set[str] = set()
        self._preamble: ServerPreamble | None = ServerPreamble()
        self._hs_timer: asyncio.TimerHandle | None = None
        self._registered = False
        # Until admitted, a peer sends nothing bigger than a CONNECTION packet.
        if server.max_handshake_size < server.max_message_size:
            self._decoder.limit(server.max_handshake_size, "max_handshake_size")

    def __repr__(self) -> str:
        return f"<IPCConnection id={self.id!r} peer={self.peer}>"

    # ------------------------------------------------------------------ connection set-up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        self.peer = peer_credentials(transport)
        server._handshaking.add(self)
        if (
            server.max_connections is not None
            and len(server._connections) + len(server._handshaking) > server.max_connections
        ):
            reason = f"server full: max_connections={server.max_connections}"
            server._report_error(HandshakeError(f"client refused: {reason}"), self)
            self._refuse(reason)
            return
        seconds = check_timeout(server.handshake_timeout)
        if seconds is not None:
            self._hs_timer = self._loop.call_later(seconds, self._handshake_expired, seconds)

    def _handshake_expired(self, seconds: float) -> None:
        self._hs_timer = None
        if not self._handshaken and self._transport is not None:
            self._fatal(
                HandshakeError(f"no CONNECTION exchange within handshake_timeout={seconds:g} s")
            )

    def _refuse(self, reason: str) -> None:
        """Turn a client away before it is admitted: END with the reason, then close."""
        transport = self._transport
        self._close_reason = reason
        self._closing = True
        if transport is None:
            return
        transport.write(end(None, reason))
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        # Do not wait long for a peer that refuses to hang up.
        self._loop.call_later(2.0, self._abort)

    def _on_preamble(self, data: bytes) -> bytes | None:
        preamble = self._preamble
        if preamble is None:
            return data
        try:
            verdict = preamble.feed(data)
        except Exception as exc:  # pragma: no cover - defensive
            self._fatal(ProtocolError(f"bad preamble: {exc}"))
            return None
        if verdict is None:
            return None
        self._preamble = None
        transport = self._transport
        if not verdict.accepted:
            self._report(ProtocolError(verdict.error or "bad preamble"))
            if transport is not None:
                if verdict.reply:
                    transport.write(verdict.reply)
                    transport.close()
                else:
                    self._abort()
            return None
        if verdict.reply and transport is not None:
            transport.write(verdict.reply)
        # Until CONNECTION completes, _dispatch routes packets to
        # _on_connection_packet; with _preamble None this hook passes bytes on.
        return bytes(preamble.data[verdict.consumed :])

    def _on_connection_packet(self, t: int, d: Any, n: Any) -> None:
        if self._registered or self._closing:
            return
        try:
            hello = read_hello(t, d)
        except ProtocolError as exc:
            self._fatal(exc)
            return
        self._registered = True  # no second CONNECTION is processed
        if hello.claimed_id is not None:
            self.id = hello.claimed_id
        self.payload = hello.payload
        if self.server.authenticate is None:
            self._admit(hello, n)
        else:
            start_task(self._authenticate(hello, n), self._tasks)

    async def _authenticate(self, hello: Hello, n: Any) -> None:
        server = self.server
        assert server.authenticate is not None
        try:
            verdict: Any = server.authenticate(self.payload, self)
            if hasattr(verdict, "__await__"):
                verdict = await verdict
        except Exception as exc:
            server._report_error(exc, self)
            verdict = False
        if self._transport is None:
            return
        if verdict is True or verdict is None:
            self._admit(hello, n)
            return
        reason = verdict if isinstance(verdict, str) and verdict else "authentication failed"
        server._report_error(HandshakeError(f"client refused: {reason}"), self)
        self._refuse(reason)

    def _admit(self, hello: Hello, n: Any) -> None:
        server = self.server
        if self._transport is None:
            return
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        compress = hello.compress and server.compress
        messagepack = hello.messagepack and server.codec == "msgpack"
        self._write(
            answer(
                self.id,
                compress=compress,
                messagepack=messagepack,
                features=hello.features,
                nonce=n,
            )
        )
        self._codec.configure(messagepack=messagepack, compress=compress)
        self._decoder.limit(server.max_message_size)
        self.remote_errors = "errors" in hello.features
        self._handshaken = True
        self.connected_at = time.time()
        server._handshaking.discard(self)
        server._connections[self] = None
        server.emit("connect", self, self.payload)

    # ------------------------------------------------------------------ events

    def _on_message(self, data: Any) -> None:
        self.server.emit("message", data, self)

    def _on_request(self, data: Any, respond: Responder) -> None:
        server = self.server
        if data.__class__ is dict and not PUBSUB_KEYS.isdisjoint(data):
            pubsub = read_pubsub(data)
            if pubsub is not None:
                server._pubsub(self, pubsub, respond)
                return
        server.emit_request("request", (data, respond, self), respond, self._tasks)

    def _on_lost(self, reason: Any, exc: BaseException | None) -> None:
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        server = self.server
        server._handshaking.discard(self)
        server._forget_topics(self)
        if self._handshaken and server._connections.pop(self, 0) is None:
            server.emit("disconnect", self, reason)

    def _report(self, exc: BaseException) -> None:
        self.server._report_error(exc, self)

    async def close(
        self, reason: Any = None, allow_reconnect: bool = False, *, timeout: float | None = 10.0
    ) -> bool:
        """Close gracefully: pending requests answered, END with ``reason``, then the socket."""
        return await super().close(reason, allow_reconnect, timeout=timeout)


class IPCServer(ServerOptions, EventEmitter):
    """An IPC server: one listener, many client connections.

    Events: ``ready(address)``, ``error(error, connection)`` (connection may
    be None), ``connect(connection, payload)``, ``disconnect(connection,
    reason)``, ``close()``, ``message(message, connection)``,
    ``request(request, respond, connection)``.

    The keyword options are those of ``ServerOptions``
    (docs/guide.md lists them with their defaults).
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        EventEmitter.__init__(self)
        self._new_id = self.id_factory or _default_id
        self._listener: Listener | None = None
        self._connections: dict[IPCConnection, None] = {}
        self._handshaking: set[IPCConnection] = set()
        self._topics: dict[str, dict[IPCConnection, None]] = {}
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<IPCServer {self.address} ready={self.is_ready} connections={len(self._connections)}>"
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_ready(self) -> bool:
        """Whether the server is listening."""
        return self._listener is not None and not self._closing

    @property
    def connections(self) -> list[IPCConnection]:
        """Live (admitted) connections, in connect order."""
        return list(self._connections)

    @property
    def bound_address(self) -> str:
        """The address as bound (TCP: with the real port)."""
        return self._listener.bound if self._listener is not None else str(self.address)

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with ``port=0``); None for Unix sockets and pipes."""
        return self._listener.port if self._listener is not None else None

    async def start(self) -> IPCServer:
        """Start listening; emits ``ready(address)``.

        Raises:
            AddressInUseError: A live server owns the address (a stale socket file is replaced).
            RuntimeError: Already started.
        """
        if self._listener is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._listener = await listen(
            lambda: IPCConnection(self), self.address, ssl=self.ssl, socket_mode=self.socket_mode
        )
        self.emit("ready", self.bound_address)
        return self

    async def close(self, allow_reconnect: bool = False, *, timeout: float | None = 10.0) -> None:
        """Stop listening and close every connection gracefully; emits ``close()``.

        With ``allow_reconnect=True`` clients reconnect (to a server started
        again at the same address); otherwise they close for good.
        """
        listener = self._listener
        if listener is None or self._closing:
            return
        self._closing = True
        listener.close()
        for conn in list(self._handshaking):
            conn.destroy(SERVER_CLOSED)
        conns = list(self._connections)
        if conns:
            await asyncio.gather(
                *(c.close(SERVER_CLOSED, allow_reconnect, timeout=timeout) for c in conns),
                return_exceptions=True,
            )
        seconds = check_timeout(timeout)
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), seconds)
        self._listener = None
        self._closing = False
        self._topics.clear()
        self.emit("close")

    async def __aenter__(self) -> IPCServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ errors

    def _report_error(self, exc: BaseException, connection: IPCConnection | None) -> None:
        if not self.emit("error", exc, connection):
            logger.warning("ipc_server: %s (connection %s)", exc, getattr(connection, "id", None))

    def _listener_failed(self, event: str, exc: BaseException, args: tuple[Any, ...] = ()) -> None:
        if event == "error":
            super()._listener_failed(event, exc)
            return
        conn = next((a for a in args if isinstance(a, IPCConnection)), None)
        self._report_error(exc, conn)

    # ------------------------------------------------------------------ pub/sub (docs/protocol.md)

    def _pubsub(
        self, conn: IPCConnection, request: tuple[str, Any, Any], respond: Responder
    ) -> None:
        """Answer a pub/sub request (``packets.read_pubsub``): subscribe, unsubscribe, publish."""
        kind, named, message = request
        if kind == "pub":
            if isinstance(named, str):
                self._deliver(named, message)
                respond(pubsub_reply(True))
            else:
                respond(pubsub_reply(False))
            return
        topics = topic_list(named)
        if kind == "sub":
            if topics is None:
                respond(pubsub_reply(False))
                return
            for topic in topics:
                self._topics.setdefault(topic, {})[conn] = None
                conn.topics.add(topic)
            respond(pubsub_reply(True))
            return
        result = False
        for topic in topics or ():
            subscribers = self._topics.get(topic)
            if subscribers is not None and subscribers.pop(conn, 0) is None:
                result = True
                if not subscribers:
                    del self._topics[topic]
            conn.topics.discard(topic)
        respond(pubsub_reply(result))

    def _forget_topics(self, conn: IPCConnection) -> None:
        for topic in conn.topics:
            subscribers = self._topics.get(topic)
            if subscribers is not None:
                subscribers.pop(conn, None)
                if not subscribers:
                    del self._topics[topic]
        conn.topics.clear()

    @property
    def topics(self) -> dict[str, list[IPCConnection]]:
        """Each topic with at least one subscriber, and its subscribers."""
        return {topic: list(subs) for topic, subs in self._topics.items()}

    def _deliver(self, topic: str, message: Any) -> int:
        subscribers = self._topics.get(topic)
        if not subscribers:
            return 0
        self._write_all(list(subscribers), MESSAGE, delivery(topic, message))
        return len(subscribers)

    def _write_all(self, conns: Iterable[IPCConnection], t: int, data: Any) -> int:
        """Encode once per codec and write the same bytes to every connection."""
        encoded: dict[str | None, bytes | list[bytes]] = {}
        count = 0
        for conn in conns:
            if conn.write_shared(t, data, encoded):
                count += 1
        return count

    async def publish(self, topic: str, message: Any = None) -> int:
        """Send ``{"pub": topic, "message": message}`` to every subscriber of ``topic``.

        The message is encoded once per codec; no subscriber is awaited, so a
        slow one does not hold up the others. Returns how many got it.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        return self._deliver(topic, message)

    async def broadcast(self, data: Any) -> int:
        """Send a message to every connection; returns how many got it."""
        return self._write_all(list(self._connections), MESSAGE, data)

    async def survey(
        self, data: Any, timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[tuple[IPCConnection, Any]]:
        """Request ``data`` from every connection at once.

        Returns ``[(connection, reply or exception)]`` in connect order; a
        connection that fails or times out has its exception in its slot.
        """
        conns = list(self._connections)
        results = await asyncio.gather(
            *(c.request(data, timeout) for c in conns), return_exceptions=True
        )
        return list(zip(conns, results, strict=False))

    async def ping(
        self, data: Any = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[tuple[IPCConnection, Any]]:
        """Ping every connection at once: ``[(connection, seconds or exception)]``."""
        conns = list(self._connections)
        results = await asyncio.gather(
            *(c.ping(data, timeout) for c in conns), return_exceptions=True
        )
        return list(zip(conns, results, strict=False))

    def pause(self) -> None:
        """Stop reading from every connection."""
        for conn in self._connections:
            conn.pause()

    def resume(self) -> None:
        """Start reading from every connection again."""
        for conn in self._connections:
            conn.resume()
