"""The clients' options, once, and the checks every option goes through.

``ClientOptions`` is a keyword-only dataclass that both clients inherit, so
each option is typed, given its default and checked in one place, and
``inspect.signature`` shows the same constructor for both fronts (the
server's options are ``server.ServerOptions``, built the same way). The
timeout helpers (``DEFAULT``, ``check_timeout``) are here too: every
blocking and asyncio call reads its ``timeout=`` through them.
"""

from __future__ import annotations

import enum
import ssl as _ssl
from dataclasses import InitVar, dataclass, field, fields
from typing import Any

from .address import Address, resolve_address
from .codecs import CODECS, DEFAULT_MAX_PACKET_OBJECTS, CodecName
from .protocol import DEFAULT_MAX_MESSAGE_SIZE

__all__ = [
    "DEFAULT",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_TIMEOUT",
    "RETRY_BASE",
    "AsyncClientOptions",
    "ClientOptions",
    "Default",
    "address_args",
    "check_codec",
    "check_size",
    "check_timeout",
    "checked_address",
    "option_values",
]

DEFAULT_TIMEOUT = 10.0
"""Default timeout of requests, pings and surveys, in seconds."""

DEFAULT_CLOSE_TIMEOUT = 10.0
"""Default bound of a graceful close, in seconds."""

DEFAULT_MAX_QUEUED = 64 * 1024 * 1024
"""Default bound on bytes queued for a peer that does not read (see ``max_queued``)."""

RETRY_BASE = 0.5
"""First reconnect delay in seconds; each further attempt doubles it, up to ``max_retry_time``."""


class Default(enum.Enum):
    """Type of ``DEFAULT``."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = Default.DEFAULT
"""The ``timeout=`` that means: the client's own default (``request_timeout``,
``connect_timeout``)."""


def check_timeout(timeout: float | None) -> float | None:
    """Check a timeout in seconds; ``0`` or ``None`` mean forever (returns None).

    Raises:
        TypeError: Not a number.
        ValueError: Negative.
    """
    if timeout is None or timeout == 0:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout!r}")
    return float(timeout)


def check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")


def check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


def checked_address(
    path: str | None, host: str | None, port: int | None, ssl: _ssl.SSLContext | None
) -> Address:
    address = resolve_address(path, host, port)
    if ssl is not None and address.kind != "tcp":
        raise ValueError("ssl= needs host=/port= (TLS runs over TCP)")
    return address


def option_values(options: object, cls: type[Any]) -> dict[str, Any]:
    """The options of ``cls`` (a dataclass here) as set on ``options``, by name.

    ``path``, ``host`` and ``port`` are not among them: they make ``address``.
    """
    return {f.name: getattr(options, f.name) for f in fields(cls) if f.init}


def address_args(address: Address) -> dict[str, Any]:
    """The ``path`` or ``host``/``port`` keywords that give ``address`` again."""
    if address.kind == "tcp":
        return {"host": address.host, "port": address.port}
    return {"path": address.path}


@dataclass(kw_only=True, eq=False, repr=False)
class ClientOptions:
    """The options both clients take (the asyncio one adds ``max_queued``).

    Args:
        path: The server's Unix socket path or name, or Windows pipe name
            (see Addresses in docs/guide.md).
        host: The server's TCP host (selects TCP).
        port: The server's TCP port.
        ssl: An ``ssl.SSLContext`` for TLS over TCP.
        handshake: Open with the HTTP upgrade preamble (for proxies).
        upgrade_token: The ``Upgrade:`` token; ``"net-ipc"`` to reach a net-ipc server.
        reconnect: Reconnect after an unexpected disconnect.
        retries: Reconnect attempts before giving up (and emitting ``close``);
            None: forever. The default, 8 attempts 0.5 s to 10 s apart (with
            jitter), outlasts a server restart of 20 s.
        max_retry_time: Cap on the delay between attempts, in seconds.
        connect_timeout: Bound on connecting plus the CONNECTION exchange.
        codec: ``"json"`` or ``"msgpack"`` (asked for; used if the server agrees).
        compress: Ask for compression.
        max_message_size: Largest packet body accepted, before and after
            inflating (64 MiB).
        max_packet_objects: Most containers (dicts and lists) one packet may
            hold (1,000,000), counted before or while it is decoded; more
            closes the connection.
        request_timeout: Default timeout of ``request``, ``ping`` and the
            pub/sub calls, in seconds (10).
        max_pending_events: Pushed messages that may wait for their listeners
            (coroutine listeners still running; the blocking client's listener
            thread) or in a ``subscription()`` without ``maxsize``; beyond it
            the client stops reading until they are taken (backpressure).
        server_uid: The uid the server of a Unix socket must run as, checked
            (where the OS tells: Linux, macOS) before anything is sent. None:
            this process's own uid, or root.
    """

    path: InitVar[str | None] = None
    host: InitVar[str | None] = None
    port: InitVar[int | None] = None
    ssl: _ssl.SSLContext | None = None
    handshake: bool = False
    upgrade_token: str = "isdk-ipc"
    reconnect: bool = True
    retries: int | None = 8
    max_retry_time: float = 10.0
    connect_timeout: float | None = 10.0
    codec: CodecName = "json"
    compress: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_packet_objects: int = DEFAULT_MAX_PACKET_OBJECTS
    request_timeout: float | None = DEFAULT_TIMEOUT
    max_pending_events: int = 10_000
    server_uid: int | None = None
    address: Address = field(init=False)
    """The server's address."""

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        self.address = checked_address(path, host, port, self.ssl)
        check_codec(self.codec)
        retries = self.retries
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
        ):
            raise ValueError(f"retries must be an int >= 0 or None, not {retries!r}")
        check_size("max_pending_events", self.max_pending_events)
        if self.max_retry_time < RETRY_BASE:
            raise ValueError(f"max_retry_time must be >= {RETRY_BASE}, not {self.max_retry_time!r}")
        check_size("max_message_size", self.max_message_size)
        check_size("max_packet_objects", self.max_packet_objects)
        check_timeout(self.connect_timeout)
        check_timeout(self.request_timeout)
        uid = self.server_uid
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, int) or uid < 0):
            raise ValueError(f"server_uid must be a uid (an int >= 0) or None, not {uid!r}")


@dataclass(kw_only=True, eq=False, repr=False)
class AsyncClientOptions(ClientOptions):
    """``ClientOptions`` and what only the asyncio client has.

    Args:
        max_queued: Bytes that may queue unsent before the connection is dropped
            (64 MiB; the blocking client writes directly and queues nothing).
    """

    max_queued: int = DEFAULT_MAX_QUEUED

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        check_size("max_queued", self.max_queued)
