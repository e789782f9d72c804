"""IPCServer and IPCConnection (docs/guide.md).

The server accepts connections, runs the preamble and CONNECTION exchange
(with the handshake timeout and the optional ``authenticate`` check), keeps
the registry of live connections and the topic registry, and offers
``publish`` / ``broadcast`` / ``survey`` / ``ping`` over all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .address import Address, resolve_address
from .codecs import CodecName, json_dumps
from .endpoint import (
    CONNECTION,
    DEFAULT_MAX_QUEUED,
    DEFAULT_TIMEOUT,
    FEATURES,
    MESSAGE,
    Endpoint,
    Responder,
    deadline_of,
)
from .errors import HandshakeError, ProtocolError
from .events import EventEmitter, start_task
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, ServerPreamble, frame
from .transport import Listener, PeerCredentials, listen, peer_credentials

__all__ = ["SERVER_CLOSED", "IPCConnection", "IPCServer"]

SERVER_CLOSED = "server closed"

Authenticate = Callable[[Any, "IPCConnection"], "bool | str | Awaitable[bool | str | None] | None"]


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
            max_queued=server.max_queued,
        )
        self.server = server
        self.id: str = server._id_factory()
        self.connected_at: float | None = None
        self.peer: PeerCredentials | None = None
        self.payload: Any = None
        self.topics: set[str] = set()
        self._preamble: ServerPreamble | None = ServerPreamble()
        self._hs_timer: asyncio.TimerHandle | None = None
        self._registered = False

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
        seconds = deadline_of(server.handshake_timeout)
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
        body = json_dumps({"t": 6, "d": {"m": reason, "a": False}})
        transport.write(frame(body))
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
        if t != CONNECTION:
            self._fatal(ProtocolError(f"packet of type {t} before the CONNECTION exchange"))
            return
        if type(d) is not dict:
            self._fatal(ProtocolError("CONNECTION packet without its data object"))
            return
        self._registered = True  # no second CONNECTION is processed
        server = self.server
        cid = d.get("id")
        if isinstance(cid, str) and cid:
            self.id = cid
        elif isinstance(cid, (int, float)) and not isinstance(cid, bool) and cid:
            self.id = str(cid)
        self.payload = d.get("extras")
        if server.authenticate is None:
            self._admit(d, n)
        else:
            start_task(self._authenticate(d, n), self._tasks)

    async def _authenticate(self, d: dict[str, Any], n: Any) -> None:
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
            self._admit(d, n)
            return
        reason = verdict if isinstance(verdict, str) and verdict else "authentication failed"
        server._report_error(HandshakeError(f"client refused: {reason}"), self)
        self._refuse(reason)

    def _admit(self, d: dict[str, Any], n: Any) -> None:
        server = self.server
        transport = self._transport
        if transport is None:
            return
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        compress = bool(d.get("compress")) and server.compress
        messagepack = bool(d.get("messagepack")) and server.codec == "msgpack"
        asked = d.get("features")
        features = [f for f in FEATURES if isinstance(asked, list) and f in asked]
        reply: dict[str, Any] = {"id": self.id, "compress": compress, "messagepack": messagepack}
        if features:
            reply["features"] = features
        packet = {"t": CONNECTION, "d": reply}
        if n is not None:
            packet["n"] = n
        self._write(frame(json_dumps(packet)))
        self._codec.configure(messagepack=messagepack, compress=compress)
        self.remote_errors = "errors" in features
        self._handshaken = True
        self.connected_at = time.time()
        server._handshaking.discard(self)
        server._connections[self] = None
        server.emit("connect", self, self.payload)

    # ------------------------------------------------------------------ events

    def _on_message(self, data: Any) -> None:
        server = self.server
        solo = server._solo.get("message")  # the oneway hot path: one listener, no chain
        if solo is not None:
            server._run_one("message", solo, (data, self))
        else:
            server.emit("message", data, self)

    def _on_request(self, data: Any, respond: Responder) -> None:
        server = self.server
        if type(data) is dict and ("pub" in data or "sub" in data or "unsub" in data):
            server._pubsub(self, data, respond)
            return
        fns = server._fns.get("request")
        if fns is None:
            respond(None)
            return
        if "request" in server._has_once:
            server._take("request")
        server._run_chain("request", fns, (data, respond, self), respond, self._tasks)

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


class IPCServer(EventEmitter):
    """An IPC server: one listener, many client connections.

    Events: ``ready(address)``, ``error(error, connection)`` (connection may
    be None), ``connect(connection, payload)``, ``disconnect(connection,
    reason)``, ``close()``, ``message(message, connection)``,
    ``request(request, respond, connection)``.

    Args:
        path: Unix socket path or name (docs/guide.md, Addresses); Windows pipe name.
        host: TCP host (selects TCP).
        port: TCP port (0 picks a free one; see ``address``).
        ssl: An ``ssl.SSLContext`` for TLS over TCP.
        max_connections: Refuse clients beyond this many (None: no limit).
        handshake_timeout: Seconds a new connection has to finish the
            CONNECTION exchange (0/None: forever).
        max_message_size: Largest packet body accepted, before and after inflating.
        max_queued: Bytes that may queue for one client that does not read
            before it is disconnected.
        socket_mode: File mode of the Unix socket (None leaves it to the umask).
        id_factory: Makes connection ids (default: 16 random hex digits).
        codec: ``"msgpack"`` (agree to msgpack when a client asks) or ``"json"`` (decline).
        compress: Agree to compression when a client asks.
        authenticate: ``fn(payload, connection)`` (plain or async) called
            before a client is admitted: return True/None to admit, False or a
            reason string to refuse (the client gets END with the reason).
        retries: Accepted for net-ipc compatibility; unused (a server does not reconnect).
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        ssl: _ssl.SSLContext | None = None,
        max_connections: int | None = None,
        handshake_timeout: float | None = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_queued: int = DEFAULT_MAX_QUEUED,
        socket_mode: int | None = 0o600,
        id_factory: Callable[[], str] | None = None,
        codec: CodecName = "msgpack",
        compress: bool = True,
        authenticate: Authenticate | None = None,
        retries: int = 3,
    ) -> None:
        super().__init__()
        self.address: Address = resolve_address(path, host, port)
        if ssl is not None and self.address.kind != "tcp":
            raise ValueError("ssl= needs host=/port= (TLS runs over TCP)")
        if codec not in ("json", "msgpack"):
            raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
        if max_connections is not None and (
            not isinstance(max_connections, int) or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be a positive int or None, not {max_connections!r}"
            )
        if not isinstance(max_message_size, int) or max_message_size < 1:
            raise ValueError(f"max_message_size must be a positive int, not {max_message_size!r}")
        deadline_of(handshake_timeout)
        self.ssl = ssl
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.max_message_size = max_message_size
        self.max_queued = max_queued
        self.socket_mode = socket_mode
        self.codec: CodecName = codec
        self.compress = compress
        self.authenticate = authenticate
        self.retries = retries
        self._id_factory = id_factory or _default_id
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
            conn._abort()
        conns = list(self._connections)
        if conns:
            await asyncio.gather(
                *(c.close(SERVER_CLOSED, allow_reconnect, timeout=timeout) for c in conns),
                return_exceptions=True,
            )
        seconds = deadline_of(timeout)
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
            from .events import logger

            logger.warning("ipc_server: %s (connection %s)", exc, getattr(connection, "id", None))

    def _listener_failed(self, event: str, exc: BaseException, args: tuple[Any, ...] = ()) -> None:
        if event == "error":
            super()._listener_failed(event, exc)
            return
        conn = next((a for a in args if isinstance(a, IPCConnection)), None)
        self._report_error(exc, conn)

    # ------------------------------------------------------------------ pub/sub (docs/protocol.md)

    def _pubsub(self, conn: IPCConnection, data: dict[str, Any], respond: Responder) -> None:
        if "pub" in data:
            topic = data["pub"]
            if isinstance(topic, str):
                self._deliver(topic, data.get("message"))
                respond({"result": True})
            else:
                respond({"result": False})
        elif "sub" in data:
            topics = _topic_list(data["sub"])
            if topics is None:
                respond({"result": False})
                return
            for topic in topics:
                self._topics.setdefault(topic, {})[conn] = None
                conn.topics.add(topic)
            respond({"result": True})
        else:
            topics = _topic_list(data["unsub"])
            result = False
            for topic in topics or ():
                subscribers = self._topics.get(topic)
                if subscribers is not None and subscribers.pop(conn, 0) is None:
                    result = True
                    if not subscribers:
                        del self._topics[topic]
                conn.topics.discard(topic)
            respond({"result": result})

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
        self._write_all(list(subscribers), MESSAGE, {"pub": topic, "message": message})
        return len(subscribers)

    def _write_all(self, conns: Iterable[IPCConnection], t: int, data: Any) -> int:
        """Encode once per codec and write the same bytes to every connection."""
        encoded: dict[str | None, bytes | list[bytes]] = {}
        count = 0
        for conn in conns:
            if conn._closing or conn._transport is None:
                continue
            codec = conn._codec
            key = codec.key
            packet = encoded.get(key) if key is not None else None
            if packet is None:
                packet = codec.encode_parts(t, data)
                if key is not None:
                    encoded[key] = packet
            conn._write(packet)
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


def _topic_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None
