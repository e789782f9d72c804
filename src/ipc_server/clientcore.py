"""Client rules both fronts share, without I/O: the asyncio ``client.py`` and the blocking ``sync.py``.

What goes on the wire from a client (the CONNECTION packet, the pub/sub
requests of docs/protocol.md), how a client reads what comes back (the
server's CONNECTION answer, a published MESSAGE, a pub/sub reply), how its
options are checked, and the reconnect backoff. Each front drives these from
its own I/O; neither restates them.
"""

from __future__ import annotations

import enum
import random
import ssl as _ssl
from typing import Any, NamedTuple

from .address import Address, resolve_address
from .codecs import CodecName, json_dumps
from .endpoint import CONNECTION, FEATURES, deadline_of
from .protocol import frame

__all__ = [
    "DEFAULT",
    "RETRY_BASE",
    "Agreement",
    "Default",
    "backoff",
    "client_address",
    "connection_packet",
    "end_data",
    "published_topic",
    "read_agreement",
    "request_publish",
    "request_subscribe",
    "request_unsubscribe",
    "succeeded",
    "topic_list",
]


class Default(enum.Enum):
    """Type of ``DEFAULT``."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = Default.DEFAULT
"""The ``timeout=`` that means: the client's own default (``request_timeout``,
``connect_timeout``)."""


RETRY_BASE = 0.5
"""First reconnect delay in seconds; each further attempt doubles it, up to ``max_retry_time``."""


def client_address(
    path: str | None,
    host: str | None,
    port: int | None,
    *,
    ssl: _ssl.SSLContext | None,
    codec: str,
    retries: int,
    max_retry_time: float,
    connect_timeout: float | None,
    request_timeout: float | None,
) -> Address:
    """Check a client's options; return its resolved address.

    Raises:
        ValueError / TypeError: An option is out of range or of the wrong type.
    """
    address = resolve_address(path, host, port)
    if ssl is not None and address.kind != "tcp":
        raise ValueError("ssl= needs host=/port= (TLS runs over TCP)")
    if codec not in ("json", "msgpack"):
        raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    if max_retry_time < RETRY_BASE:
        raise ValueError(f"max_retry_time must be >= {RETRY_BASE}, not {max_retry_time!r}")
    deadline_of(connect_timeout)
    deadline_of(request_timeout)
    return address


def connection_packet(
    payload: Any, client_id: str | None, *, compress: bool, codec: CodecName
) -> bytes:
    """The client's CONNECTION packet, framed (docs/protocol.md; always JSON, uncompressed)."""
    d = {
        "extras": payload,
        "id": client_id,
        "compress": compress,
        "messagepack": codec == "msgpack",
        "features": list(FEATURES),
    }
    return frame(json_dumps({"t": CONNECTION, "d": d}))


class Agreement(NamedTuple):
    """What the server's CONNECTION answer agreed to."""

    messagepack: bool
    compress: bool
    remote_errors: bool
    """Whether the server announced the ``errors`` extension."""


def read_agreement(d: dict[str, Any]) -> Agreement:
    """Read the ``d`` of the server's CONNECTION answer."""
    features = d.get("features")
    return Agreement(
        bool(d.get("messagepack")),
        bool(d.get("compress")),
        isinstance(features, list) and "errors" in features,
    )


def end_data(d: Any) -> dict[str, Any]:
    """An END packet's ``d`` as ``{"m": reason, "a": allow_reconnect}`` (a bare reason is allowed)."""
    return d if type(d) is dict else {"m": d, "a": False}


def published_topic(data: Any) -> str | None:
    """The topic if a MESSAGE is a pub/sub delivery (docs/protocol.md), else None.

    A delivery is ``{"pub": topic, "message": message}``; its message is
    ``data["message"]``, and may be falsy (0, "", None, False).
    """
    if data.__class__ is dict:
        topic = data.get("pub")
        if topic.__class__ is str and "message" in data:
            return topic
    return None


def topic_list(topic: str | list[str]) -> list[str]:
    """The topics named by ``topic`` (one, or a non-empty list).

    Raises:
        TypeError: Anything else.
    """
    if isinstance(topic, str):
        return [topic]
    if isinstance(topic, list) and topic and all(isinstance(t, str) for t in topic):
        return topic
    raise TypeError("topic must be a str or a non-empty list of str")


def request_subscribe(topic: str | list[str]) -> dict[str, Any]:
    """The request that subscribes to ``topic`` (one or several)."""
    return {"sub": topic}


def request_unsubscribe(topic: str | list[str]) -> dict[str, Any]:
    """The request that unsubscribes from ``topic`` (one or several)."""
    return {"unsub": topic}


def request_publish(topic: str, message: Any) -> dict[str, Any]:
    """The request that publishes ``message`` to ``topic``.

    Raises:
        TypeError: ``topic`` is not a str.
    """
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    return {"pub": topic, "message": message}


def succeeded(reply: Any) -> bool:
    """Whether a pub/sub reply says ``{"result": true}``."""
    return type(reply) is dict and reply.get("result") is True


def backoff(attempt: int, max_retry_time: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...).

    0.5 s, 1 s, 2 s, ... capped at ``max_retry_time``, each with jitter in
    [base/2, base] so that clients that lost the server together spread out.
    """
    base = min(RETRY_BASE * 2.0 ** (attempt - 1), float(max_retry_time))
    return base * (0.5 + random.random() / 2)
