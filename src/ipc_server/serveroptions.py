"""The server's options, once: names, types, defaults and checks (``server.IPCServer``
and ``sync.IPCServer`` inherit them; see ``options`` for the clients')."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import InitVar, dataclass, field
from typing import Any

from .address import Address
from .admission import DEFAULT_MAX_HANDSHAKING, checked_uids, default_max_connections
from .codecs import DEFAULT_MAX_PACKET_OBJECTS, CodecName
from .options import (
    DEFAULT_MAX_QUEUED,
    check_codec,
    check_size,
    check_timeout,
    checked_address,
)
from .protocol import DEFAULT_MAX_HANDSHAKE_SIZE, DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Authenticate", "ServerOptions"]

Authenticate = Callable[[Any, Any], "bool | str | Awaitable[bool | str | None] | None"]
"""``fn(payload, connection)`` (the connection: an ``IPCConnection``), plain or async:
True/None admits, False or a reason string refuses."""


@dataclass(kw_only=True, eq=False, repr=False)
class ServerOptions:
    """The options of ``IPCServer`` (asyncio) and ``ipc_server.sync.IPCServer``.

    Args:
        path: Unix socket path or name (docs/guide.md, Addresses); Windows pipe name.
        host: TCP host (selects TCP).
        port: TCP port (0 picks a free one; see ``port`` of the started server).
        ssl: An ``ssl.SSLContext`` for TLS over TCP.
        max_connections: Refuse clients beyond this many, those not yet
            admitted included (None: no limit). The default is derived from
            the process's descriptor limit: ``limit - max(64, limit // 10)``
            (``admission.default_max_connections``; 10,000 on Windows).
        max_handshaking: Peers accepted but not yet admitted (256); a new one beyond
            them is sent END "server busy" and closed at once (None: no limit).
            TLS peers count from accept; beyond the bound asyncio's loop closes
            them before their TLS handshake, uvloop's after it, with the END.
        handshake_timeout: Seconds a new connection has to finish the TLS
            handshake and the CONNECTION exchange (0/None: forever, but the
            TLS handshake still gets the loop's 60 s at most).
        allowed_uids: The uids whose processes may connect to a Unix socket
            (the peer's uid as the kernel tells). None: on an abstract socket
            the server's own uid and root, on a socket file whoever its
            ``socket_mode`` lets in. Not for TCP.
        max_message_size: Largest packet body accepted, before and after
            inflating (64 MiB).
        max_handshake_size: Largest packet body accepted before the client is
            admitted (its CONNECTION packet), refused from its length tag (64 KiB).
        max_packet_objects: Most containers (dicts and lists) one packet may
            hold (1,000,000), counted before or while it is decoded; more
            closes the connection.
        max_queued: Bytes that may queue for one client that does not read
            before it is disconnected (64 MiB).
        write_deadline: Seconds a client's output may stay over the write
            high-water mark without draining below the low-water mark before
            the client is disconnected (reported on ``error``; 0/None: forever).
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
        max_topics_per_connection: Topics one connection may be subscribed to;
            a subscribe beyond it answers false and ``error`` is emitted (None: no bound).
        max_topic_length: Longest topic a connection may subscribe to, in
            characters; a longer one is refused the same way (None: no bound).
        keepalive_interval: Seconds without a byte from a connection after which
            the server pings it; two pings unanswered close it with END
            "keepalive timeout" (None: never).
        read_timeout: Seconds a connection may stay in the middle of a packet
            without sending a byte; then it is closed and its buffer freed (None: no bound).
        allow_stats: Who may ask the running server for its ``stats()`` (what
            ``ipc-server stats`` and ``top`` show): None, peers of the server's
            own uid (and root) over a Unix socket; True, every admitted peer
            (TCP too); False, nobody; or a set of uids.
        retries: Accepted for net-ipc compatibility; unused (a server does not reconnect).
    """

    path: InitVar[str | None] = None
    host: InitVar[str | None] = None
    port: InitVar[int | None] = None
    ssl: _ssl.SSLContext | None = None
    max_connections: int | None = field(default_factory=default_max_connections)
    max_handshaking: int | None = DEFAULT_MAX_HANDSHAKING
    handshake_timeout: float | None = 10.0
    allowed_uids: Iterable[int] | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_handshake_size: int = DEFAULT_MAX_HANDSHAKE_SIZE
    max_packet_objects: int = DEFAULT_MAX_PACKET_OBJECTS
    max_queued: int = DEFAULT_MAX_QUEUED
    write_deadline: float | None = 10.0
    socket_mode: int | None = 0o600
    id_factory: Callable[[], str] | None = None
    codec: CodecName = "msgpack"
    compress: bool = True
    authenticate: Authenticate | None = None
    max_concurrent_requests: int | None = 256
    cancel_on_disconnect: bool = True
    max_topics_per_connection: int | None = 10_000
    max_topic_length: int | None = 1024
    keepalive_interval: float | None = 30.0
    read_timeout: float | None = 30.0
    allow_stats: bool | Iterable[int] | None = None
    retries: int = 3
    address: Address = field(init=False)
    """The address as configured (``bound_address`` tells where a started server listens)."""

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        self.address = checked_address(path, host, port, self.ssl)
        check_codec(self.codec)
        if self.max_connections is not None:
            check_size("max_connections", self.max_connections)
        for name in ("max_concurrent_requests", "max_topics_per_connection", "max_topic_length"):
            value = getattr(self, name)
            if value is not None:
                check_size(name, value)
        if self.max_handshaking is not None:
            check_size("max_handshaking", self.max_handshaking)
        self.allowed_uids = checked_uids(self.allowed_uids)
        if self.allowed_uids is not None and self.address.kind == "tcp":
            raise ValueError("allowed_uids is for Unix sockets: a TCP peer has no uid")
        check_size("max_message_size", self.max_message_size)
        check_size("max_handshake_size", self.max_handshake_size)
        check_size("max_packet_objects", self.max_packet_objects)
        check_size("max_queued", self.max_queued)
        check_timeout(self.handshake_timeout)
        if self.allow_stats is not None and not isinstance(self.allow_stats, bool):
            self.allow_stats = frozenset(checked_uids(self.allow_stats) or ())
        check_timeout(self.keepalive_interval)
        check_timeout(self.read_timeout)
        check_timeout(self.write_deadline)
