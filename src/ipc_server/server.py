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
import os
import secrets
import time
from collections import Counter
from typing import Any

from .address import Address
from .admission import (
    OUT_OF_DESCRIPTORS,
    TLS_HANDSHAKE_TIMEOUT,
    admitted_uids,
    at_accept,
    uid_refusal,
)
from .clustering import Clustering
from .codecs import msgpack_keys_warning
from .endpoint import Endpoint, Responder
from .errors import HandshakeError, ProtocolError
from .events import EventEmitter, Throttle, shorten, start_task
from .listeners import ServerListeners
from .options import (
    DEFAULT_TIMEOUT,
    check_timeout,
)
from .packets import (
    CANCEL,
    GROUPS,
    PUBSUB_KEYS,
    SERVICE_REQUESTS,
    SERVICES,
    STATS,
    Hello,
    answer,
    end,
    read_hello,
    read_pubsub,
)
from .protocol import ServerPreamble
from .pubsub import PubSub
from .serveroptions import Authenticate, ServerOptions
from .services import ServiceRegistry, Services
from .topics import TopicRegistry
from .transport import Listener, PeerCredentials, accepted_peer, listen

__all__ = [
    "SERVER_CLOSED",
    "Authenticate",
    "IPCConnection",
    "IPCServer",
    "ServerOptions",
    "serving_loop",
]

logger = logging.getLogger("ipc_server.server")

SERVER_CLOSED = "server closed"

MAX_ID_LENGTH = 128
"""The longest connection id a client may claim; a longer claim gets a fresh id."""


_SERVING: dict[Address, asyncio.AbstractEventLoop] = {}
"""The address of each started asyncio server, and the loop that runs it."""


def serving_loop(address: Address | None) -> asyncio.AbstractEventLoop | None:
    """The event loop of a server of this process listening at ``address``, if any
    (``None``: of any server).

    A blocking client must not wait on that loop's thread (``sync.check_not_serving``).
    """
    if address is None:
        return next(iter(_SERVING.values()), None)
    return _SERVING.get(address)


def _peer_text(peer: PeerCredentials | None) -> str:
    return "" if peer is None else f" (pid {peer.pid}, uid {peer.uid})"


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
    """

    def __init__(self, server: IPCServer) -> None:
        super().__init__(
            max_message_size=server.max_message_size,
            max_packet_objects=server.max_packet_objects,
            max_queued=server.max_queued,
            max_concurrent=server.max_concurrent_requests,
            hold_while_paused=True,
            cancel_on_lost=server.cancel_on_disconnect,
            write_deadline=server.write_deadline,
        )
        self.server = server
        self.id: str = server._new_id()
        self.connected_at: float | None = None
        self.peer: PeerCredentials | None = None
        self.payload: Any = None
        self._preamble: ServerPreamble | None = ServerPreamble()
        self._hs_timer: asyncio.TimerHandle | None = None
        self._registered = False
        self._log_throttle = Throttle()
        self._expired = False  # handshake_timeout ran out before connection_made
        # The loop calls this factory at accept, before a TLS handshake: the peer
        # counts from now, and the timer bounds the TLS handshake too (a failed
        # one is never reported to this protocol: the timer forgets the peer).
        if server._gated:
            server._gated -= 1  # let through by IPCServer._gate
        self._refusal = at_accept(
            len(server._connections),
            len(server._handshaking),
            server.max_connections,
            server.max_handshaking,
        )
        if self._refusal is None:
            server._handshaking.add(self)
            seconds = check_timeout(server.handshake_timeout)
            if seconds is None and server.ssl is not None:
                seconds = TLS_HANDSHAKE_TIMEOUT
            if seconds is not None:
                self._hs_timer = self.loop.call_later(seconds, self._handshake_expired, seconds)
        # Until admitted, a peer sends nothing bigger than a CONNECTION packet.
        if server.max_handshake_size < server.max_message_size:
            self._decoder.limit(server.max_handshake_size, "max_handshake_size")

    def __repr__(self) -> str:
        return f"<IPCConnection id={shorten(self.id)!r} peer={self.peer}>"

    @property
    def topics(self) -> frozenset[str]:
        """Topics this connection is subscribed to."""
        return self.server._registry.topics_of(self)

    # ------------------------------------------------------------------ connection set-up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        self.peer = accepted_peer(transport)
        refusal = self._refusal
        if refusal is None and server._uids is not None:
            refusal = uid_refusal(None if self.peer is None else self.peer.uid, server._uids)
        if refusal is not None:
            self._leave_handshake()
            server._report_error(HandshakeError(refusal.error), self)
            self._refuse(refusal.reason)
        elif self._expired:
            self._abort()  # its TLS handshake ended after handshake_timeout (reported then)

    def _handshake_expired(self, seconds: float) -> None:
        self._hs_timer = None
        if self._handshaken:
            return
        if self._transport is None:
            # Still in its TLS handshake, or that failed (the loop drops such a socket
            # without telling this protocol): forget the peer.
            self._expired = True
            self.server._handshaking.discard(self)
            self._report(
                HandshakeError(
                    f"no TLS handshake within handshake_timeout={seconds:g} s (slow or failed)"
                )
            )
            return
        self._fatal(
            HandshakeError(f"no CONNECTION exchange within handshake_timeout={seconds:g} s")
        )

    def _leave_handshake(self) -> None:
        """No longer a peer in the handshake (refused, lost, or its server closed)."""
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.server._handshaking.discard(self)

    def _refuse(self, reason: str) -> None:
        """Turn a client away before it is admitted: END with the reason, then close."""
        transport = self._transport
        self._close_reason = reason
        self._closing = True
        self.server._refused[reason.partition(":")[0]] += 1
        if logger.isEnabledFor(logging.INFO):
            logger.info("peer refused%s: %s", _peer_text(self.peer), shorten(reason, 200))
        if transport is None:
            return
        transport.write(end(None, reason))
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        # Do not wait long for a peer that refuses to hang up.
        self.loop.call_later(2.0, self._abort)

    def _on_preamble(self, data: bytes) -> bytes | None:
        preamble = self._preamble
        if preamble is None:
            return data
        if self._closing:
            return None  # refused: what it sends meanwhile is not read
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
        server = self.server
        claimed = hello.claimed_id
        if claimed is not None and server._may_claim(claimed):
            self.id = claimed  # a reconnecting client keeps its id
        self.payload = hello.payload
        if server.authenticate is None:
            self._admit(hello, n)
        else:
            # Packets pipelined behind CONNECTION wait for the verdict (and then are read).
            self.hold_reading("auth")
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
        said, theirs = hello.timeout  # how long its requests without "dl" wait
        implied = said and CANCEL in hello.features
        self._write(
            answer(
                self.id,
                compress=compress,
                messagepack=messagepack,
                features=hello.features,
                nonce=n,
                timeouts=(theirs, DEFAULT_TIMEOUT) if implied else None,
            )
        )
        self._codec.configure(messagepack=messagepack, compress=compress)
        self._decoder.limit(server.max_message_size)
        self._agreed(frozenset(hello.features), (DEFAULT_TIMEOUT, theirs) if implied else None)
        self._handshaken = True
        self.connected_at = time.time()
        if not server._may_claim(self.id):
            self.id = server._new_id()  # claimed by another while this one was authenticated
        server._handshaking.discard(self)
        server._connections[self] = None
        server._ids[self.id] = self
        if logger.isEnabledFor(logging.INFO):
            logger.info("connection %s admitted%s", shorten(self.id), _peer_text(self.peer))
        server.emit("connect", self, self.payload)
        self.release_reading("auth")

    # ------------------------------------------------------------------ events

    def _on_message(self, data: Any) -> None:
        self.server.emit("message", data, self)

    def _on_request(self, data: Any, respond: Responder) -> None:
        server = self.server
        if data.__class__ is dict and not PUBSUB_KEYS.isdisjoint(data):
            pubsub = read_pubsub(data, GROUPS in self.features)
            if pubsub is not None:
                server.pubsub_request(self, pubsub, respond)
                return
        server.emit_request("request", (data, respond, self), respond, self._tasks)

    def _on_lost(self, reason: Any, exc: BaseException | None) -> None:
        self._leave_handshake()
        server = self.server
        totals = server._totals
        totals["packets_in"] += self._packets_in
        totals["packets_out"] += self._packets_out
        totals["bytes_in"] += self._bytes_in
        totals["bytes_out"] += self._bytes_out
        server.forget_connection(self)
        if server._ids.get(self.id) is self:
            del server._ids[self.id]
        if self._handshaken and server._connections.pop(self, 0) is None:
            if logger.isEnabledFor(logging.INFO):
                logger.info("connection %s gone: %s", shorten(self.id), shorten(reason, 200))
            server.emit("disconnect", self, reason)

    def _report(self, exc: BaseException) -> None:
        self.server._report_error(exc, self)

    def stats(self) -> dict[str, Any]:
        """What this connection has carried and holds (see ``Endpoint.stats``), and who it is."""
        peer = self.peer
        return {
            "id": self.id,
            "pid": None if peer is None else peer.pid,
            "uid": None if peer is None else peer.uid,
            "connected_for": None
            if self.connected_at is None
            else round(time.time() - self.connected_at, 3),
            "topics": len(self.topics),
            **super().stats(),
        }

    def _on_request_extension(
        self, x: Any, packet: dict[str, Any], n: str, respond: Responder
    ) -> bool:
        if x in SERVICE_REQUESTS and SERVICES in self.features:
            self.server.service_request(self, x, packet, respond)
            return True
        if x != STATS or STATS not in self.features:
            return False
        server = self.server
        if server._may_see_stats(self):
            respond(server.stats(connections=bool(packet.get("d"))))
        else:
            respond.fail(PermissionError(f"stats are not answered to this peer ({self.peer})"))
        return True

    async def close(
        self, reason: Any = None, allow_reconnect: bool = False, *, timeout: float | None = 10.0
    ) -> bool:
        """Close gracefully: pending requests answered, END with ``reason``, then the socket."""
        return await super().close(reason, allow_reconnect, timeout=timeout)


# ServerListeners types on/once for the eight events, narrower than EventEmitter's (hence the ignore).
class IPCServer(  # type: ignore[misc]
    ServerOptions,
    PubSub[IPCConnection],
    Services[IPCConnection],
    Clustering[IPCConnection],
    ServerListeners[IPCConnection],
    EventEmitter,
):
    """An IPC server: one listener, many client connections.

    Events: ``ready(address)``, ``error(error, connection)`` (connection may
    be None), ``connect(connection, payload)``, ``disconnect(connection,
    reason)``, ``close()``, ``message(message, connection)``,
    ``request(request, respond, connection)``; with a backplane, also
    ``backplane(kind, info)`` (docs/backplane.md).

    The keyword options are those of
    [`ServerOptions`][ipc_server.serveroptions.ServerOptions], described there
    (docs/guide.md lists the limits with their defaults).
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        EventEmitter.__init__(self)
        self._new_id = self.id_factory or _default_id
        self._listener: Listener | None = None
        self._connections: dict[IPCConnection, None] = {}
        self._ids: dict[str, IPCConnection] = {}  # admitted connections by id
        self._handshaking: set[IPCConnection] = set()
        self._uids = admitted_uids(self.address, self.allowed_uids)
        self._gated = 0  # TLS peers let through by _gate whose protocol is not made yet
        self._registry: TopicRegistry[IPCConnection] = TopicRegistry(
            self.max_topics_per_connection, self.max_topic_length
        )
        self._services: ServiceRegistry[IPCConnection] = ServiceRegistry(
            self.max_concurrent_requests, self.max_topics_per_connection
        )
        self._closing = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._log_throttle = Throttle()
        self._started_at: float | None = None
        self._totals: Counter[str] = Counter()  # what connections that are gone carried
        self._refused: Counter[str] = Counter()  # peers turned away, by reason
        self._errors: Counter[str] = Counter()  # problems reported, by kind

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
        """Start listening; emits ``ready(address)``. With a backplane, returns once it
        is connected, or after its ``connect_timeout`` with it down (it keeps trying).

        Raises:
            AddressInUseError: A live server owns the address (a stale socket file is replaced).
            RuntimeError: Already started.
        """
        if self._listener is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._gated = 0
        self._started_at = time.monotonic()
        self._listener = await listen(
            lambda: IPCConnection(self),
            self.address,
            ssl=self.ssl,
            socket_mode=self.socket_mode,
            handshake_timeout=check_timeout(self.handshake_timeout),
            refusal=end(None, OUT_OF_DESCRIPTORS),
            gate=self._gate if self.ssl is not None else None,
        )
        try:
            await self._start_backplane()  # connected, or down after its connect_timeout
        except BaseException:
            self._listener.close()
            self._listener = None
            raise
        period = self._tick_period()
        if period is not None:
            self._tick_handle = asyncio.get_running_loop().call_later(period, self._tick, period)
        _SERVING[self.address] = asyncio.get_running_loop()
        logger.info("listening on %s", self.bound_address)
        if (immortal := msgpack_keys_warning(self.codec)) is not None:
            logger.warning(immortal)
        self.emit("ready", self.bound_address)
        return self

    def _tick_period(self) -> float | None:
        """How often the connections are looked at for keepalive and read_timeout."""
        bounds = [
            b
            for b in (check_timeout(self.keepalive_interval), check_timeout(self.read_timeout))
            if b
        ]
        return min([*bounds, 10.0]) / 2 if bounds else None

    def _tick(self, period: float) -> None:
        """One timer for every connection: who has not been heard from, who is stuck mid-packet."""
        keepalive = check_timeout(self.keepalive_interval)
        read_timeout = check_timeout(self.read_timeout)
        for conn in list(self._connections):
            conn.check_liveness(period, keepalive, read_timeout)
        self._tick_handle = asyncio.get_running_loop().call_later(period, self._tick, period)

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
        await self._close_backplane()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for conn in list(self._handshaking):
            conn._leave_handshake()
            conn._expired = True  # a TLS handshake still under way ends in an abort
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
        if _SERVING.get(self.address) is asyncio.get_running_loop():
            del _SERVING[self.address]
        self._closing = False
        self._registry.clear()
        self.emit("close")

    async def __aenter__(self) -> IPCServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _gate(self) -> bool:
        """A TLS peer is being accepted (asyncio): within the bounds, or closed at once?"""
        refusal = at_accept(
            len(self._connections),
            len(self._handshaking) + self._gated,
            self.max_connections,
            self.max_handshaking,
        )
        if refusal is not None:
            self._report_error(HandshakeError(refusal.error), None)
            return False
        self._gated += 1
        return True

    # ------------------------------------------------------------------ errors

    def _may_claim(self, claimed: str) -> bool:
        """Whether a client may have the id it asks for: short, and no live connection's."""
        return len(claimed) <= MAX_ID_LENGTH and claimed not in self._ids

    def _report_error(
        self, exc: BaseException, connection: IPCConnection | None, listener: str | None = None
    ) -> None:
        """Count a problem, emit it on ``error``, and log it (``listener``: the event whose
        listener raised it; else a protocol problem or a bound crossed)."""
        self._errors[getattr(exc, "option", None) or type(exc).__name__] += 1
        heard = self.emit("error", exc, connection)
        # Logged at ERROR (a handler's exception, with its traceback) or WARNING (a peer's
        # doing), or at DEBUG only when the application listens to "error" itself;
        # throttled per connection, so a flood of bad packets cannot flood the log.
        level = logging.DEBUG if heard else logging.ERROR if listener else logging.WARNING
        if not logger.isEnabledFor(level):
            return
        throttle = self._log_throttle if connection is None else connection._log_throttle
        held = throttle.allow()
        if held is None:
            return
        who = "" if connection is None else f" (connection {shorten(connection.id)})"
        more = f" [{held} similar lines held back]" if held else ""
        if listener is None:
            logger.log(level, "%s: %s%s%s", type(exc).__name__, shorten(exc, 500), who, more)
        else:
            logger.log(
                level,
                "a %r handler raised %s: %s%s%s",
                listener,
                type(exc).__name__,
                shorten(exc, 500),
                who,
                more,
                exc_info=exc,
            )

    def _listener_failed(self, event: str, exc: BaseException, args: tuple[Any, ...] = ()) -> None:
        if event == "error":
            super()._listener_failed(event, exc)
            return
        conn = next((a for a in args if isinstance(a, IPCConnection)), None)
        self._report_error(exc, conn, event)

    # ------------------------------------------------------------------ stats

    def stats(self, *, connections: bool = False) -> dict[str, Any]:
        """What the server holds and has carried, from counters it keeps always.

        ``connections``, ``handshaking``, ``topics`` and ``subscriptions`` now;
        ``handlers`` (request handlers running), ``pending`` (its own requests
        waiting for answers) and ``queued`` (bytes not yet handed to the OS),
        summed over the connections; ``packets_in``/``packets_out`` and
        ``bytes_in``/``bytes_out`` since it started, connections that left
        included; ``refused`` (peers turned away, by reason) and ``errors``
        (problems reported on ``error``, by the option crossed or the error's
        type). With ``connections=True``, also each connection's own
        ``stats()`` under ``"per_connection"``.
        """
        per = [conn.stats() for conn in self._connections]
        totals = self._totals
        started = self._started_at
        result: dict[str, Any] = {
            "address": self.bound_address,
            "pid": os.getpid(),
            "uptime": None if started is None else round(time.monotonic() - started, 3),
            "connections": len(per),
            "handshaking": len(self._handshaking),
            "topics": self._registry.topic_count(),
            "subscriptions": self._registry.subscription_count(),
            "handlers": sum(p["handlers"] for p in per),
            "pending": sum(p["pending"] for p in per),
            "queued": sum(p["queued"] for p in per),
        }
        for key in ("packets_in", "packets_out", "bytes_in", "bytes_out"):
            result[key] = totals[key] + sum(p[key] for p in per)
        result["refused"] = dict(self._refused)
        result["errors"] = dict(self._errors)
        if self.backplane is not None:
            result["backplane"] = self.backplane.stats()
        if connections:
            result["per_connection"] = per
        return result

    def _may_see_stats(self, conn: IPCConnection) -> bool:
        """Whether ``conn``'s peer may ask for ``stats()`` (the ``allow_stats`` option)."""
        allowed = self.allow_stats
        if allowed is True or allowed is False:
            return allowed
        peer = conn.peer
        uid = None if peer is None else peer.uid
        if uid is None:
            return False  # TCP (or no credentials): only when allow_stats=True
        if allowed is None:
            return uid in (os.getuid() if hasattr(os, "getuid") else -1, 0)
        return uid in allowed

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
