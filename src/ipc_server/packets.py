"""The packet vocabulary, once (docs/protocol.md): what each packet dict holds.

``protocol.py`` cuts bytes into bodies and ``codecs.py`` turns bodies into
dicts; this module says what those dicts mean. It builds and reads the
CONNECTION hello and answer, END, the error answer, and the pub/sub
requests and deliveries, and routes a decoded packet to the handler method
of its type (``dispatch``). Both drivers (the asyncio ``Endpoint`` and the
blocking connection) and both ends use it; nothing else builds or takes
apart a packet dict. No I/O, no clock.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from .codecs import CodecName, PacketCodec, json_dumps
from .errors import (
    ConnectionClosedError,
    ConnectionDestroyedError,
    HandshakeError,
    IPCError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from .protocol import frame

__all__ = [
    "CALL",
    "CANCEL",
    "CONNECTION",
    "CREDIT",
    "END",
    "FEATURES",
    "GROUPS",
    "ITEM",
    "LAST",
    "MAX_WINDOW",
    "MESSAGE",
    "NO_DEADLINE",
    "PING",
    "PONG",
    "PUBSUB_KEYS",
    "REQUEST",
    "RESPONSE",
    "SERVE",
    "SERVICES",
    "SERVICE_REQUESTS",
    "STATS",
    "STREAM",
    "STREAMS",
    "UNSERVE",
    "WILDCARDS",
    "Agreement",
    "Hello",
    "IPCMessageType",
    "PacketDispatcher",
    "answer",
    "call_fields",
    "cancel_notice",
    "credit_notice",
    "delivery",
    "end",
    "error_answer",
    "error_fields",
    "extension_packet",
    "hello",
    "implied",
    "loss",
    "publish_request",
    "published_topic",
    "pubsub_reply",
    "read_answer",
    "read_deadline",
    "read_end",
    "read_error",
    "read_hello",
    "read_pubsub",
    "read_window",
    "request_fields",
    "stats_request",
    "stream_answer",
    "stream_item",
    "stream_last",
    "subscribe_request",
    "succeeded",
    "topic_list",
    "unsubscribe_request",
]


class IPCMessageType(enum.IntEnum):
    """Packet types, the ``t`` field of every packet."""

    CONNECTION = 0
    MESSAGE = 1
    REQUEST = 2
    RESPONSE = 3
    PING = 4
    PONG = 5
    END = 6


# Plain ints for the hot paths (an IntEnum member compares slower).
CONNECTION = IPCMessageType.CONNECTION.value
MESSAGE = IPCMessageType.MESSAGE.value
REQUEST = IPCMessageType.REQUEST.value
RESPONSE = IPCMessageType.RESPONSE.value
PING = IPCMessageType.PING.value
PONG = IPCMessageType.PONG.value
END = IPCMessageType.END.value

STATS = "stats"
"""The extension of a REQUEST packet that asks a server for its ``stats()`` (``"x": "stats"``)."""

WILDCARDS = "wildcards"
GROUPS = "groups"
SERVICES = "services"
STREAMS = "streams"
CANCEL = "cancel"

# The ``x`` of the packets of those extensions (docs/protocol.md, sections 10 to 13).
SERVE = "serve"
UNSERVE = "unserve"
CALL = "call"
STREAM = "stream"
ITEM = "item"
LAST = "end"
CREDIT = "credit"

SERVICE_REQUESTS = frozenset({SERVE, UNSERVE, CALL})
"""The ``x`` of the REQUEST packets a server answers for the ``services`` extension."""

FEATURES: tuple[str, ...] = ("errors", "retry", STATS, WILDCARDS, GROUPS, SERVICES, STREAMS, CANCEL)
"""Extensions this library announces in the CONNECTION packet (docs/protocol.md, section 5).

``errors``: a failed request handler answers with a RESPONSE carrying
``"e": {"type": ..., "message": ...}``, read as ``RemoteError``.

``retry``: a server that sends END has not run, and will not run, any
request it did not answer before that END; the client may send them again
(it does so by itself after an END that allows a reconnect).

``stats``: a REQUEST packet with ``"x": "stats"`` (beside ``t``, ``d``, ``n``)
asks the server for its ``stats()``; it is answered only to peers its
``allow_stats`` lets in (else an error answer), and never reaches a handler.

``wildcards``: the server matches subscriptions as patterns (``*`` one token,
``>`` the rest; ``topics.py``). ``groups``: ``{"sub": t, "group": g}`` joins a
worker group. ``services``: ``"x": "serve"``/``"unserve"`` register a worker,
``"x": "call"`` with ``"s": name`` calls one. ``streams``: ``"x": "stream"``
asks for an answer in items, with a credit window. ``cancel``: a requester
that gives up sends a cancel notice, and a REQUEST may carry ``"dl"``, the
seconds its requester waits; each end says in its CONNECTION packet how long
its requests without ``"dl"`` wait (``implied``), so a request with the usual
timeout needs none.
"""


# ---------------------------------------------------------------------- CONNECTION


def hello(
    payload: Any,
    client_id: str | None,
    *,
    compress: bool,
    codec: CodecName,
    timeout: float | None = None,
) -> bytes:
    """The client's CONNECTION packet, framed (always JSON, uncompressed). ``timeout``:
    how long this client's requests that carry no ``"dl"`` wait (None: forever)."""
    d = {
        "extras": payload,
        "id": client_id,
        "compress": compress,
        "messagepack": codec == "msgpack",
        "features": list(FEATURES),
        "dl": timeout,
    }
    return frame(json_dumps({"t": CONNECTION, "d": d}))


NO_DEADLINE: dict[str, Any] = {"dl": None}
"""The fields of a request that waits forever, to a peer whose implied deadline is not."""


def implied(value: Any) -> tuple[bool, float | None]:
    """Read an implied deadline (``"dl"`` of a CONNECTION packet): ``(valid, seconds)``,
    seconds None for forever."""
    if value is None:
        return True, None
    if value.__class__ in (int, float) and 0 < value < 1e12:
        return True, float(value)
    return False, None


class Hello(NamedTuple):
    """What a client's CONNECTION packet asks for (read by ``read_hello``)."""

    payload: Any
    """What the client passed to ``connect()`` (``extras``)."""
    claimed_id: str | None
    """The id the client asks to keep (a reconnecting client), or None."""
    compress: bool
    messagepack: bool
    features: tuple[str, ...]
    """The extensions both ends know (ours that the client announced)."""
    timeout: tuple[bool, float | None]
    """Whether the client said how long its requests without ``"dl"`` wait, and how long."""


def read_hello(t: int, d: Any) -> Hello:
    """Read the first packet a client sends.

    Raises:
        ProtocolError: It is not a CONNECTION packet with its data object.
    """
    if t != CONNECTION:
        raise ProtocolError(f"packet of type {t} before the CONNECTION exchange")
    if type(d) is not dict:
        raise ProtocolError("CONNECTION packet without its data object")
    cid = d.get("id")
    claimed: str | None = None
    if isinstance(cid, str) and cid:
        claimed = cid
    elif isinstance(cid, (int, float)) and not isinstance(cid, bool) and cid:
        claimed = str(cid)  # net-ipc peers may send a number
    asked = d.get("features")
    features = tuple(f for f in FEATURES if isinstance(asked, list) and f in asked)
    timeout = implied(d["dl"]) if "dl" in d else (False, None)
    return Hello(
        d.get("extras"),
        claimed,
        bool(d.get("compress")),
        bool(d.get("messagepack")),
        features,
        timeout,
    )


def answer(
    conn_id: str,
    *,
    compress: bool,
    messagepack: bool,
    features: tuple[str, ...],
    nonce: Any,
    timeouts: tuple[float | None, float | None] | None = None,
) -> bytes:
    """The server's CONNECTION answer, framed (JSON, uncompressed): what it agreed to.

    ``timeouts``: how long the client's requests without ``"dl"`` wait (as the
    client said), then the server's; sent as ``"dl": [client's, server's]``.
    """
    d: dict[str, Any] = {"id": conn_id, "compress": compress, "messagepack": messagepack}
    if features:
        d["features"] = list(features)
    if timeouts is not None:
        d["dl"] = list(timeouts)
    packet: dict[str, Any] = {"t": CONNECTION, "d": d}
    if nonce is not None:
        packet["n"] = nonce
    return frame(json_dumps(packet))


class Agreement(NamedTuple):
    """What the server's CONNECTION answer agreed to."""

    info: dict[str, Any]
    """The answer's ``d`` as it came (id, compress, messagepack, features)."""
    messagepack: bool
    compress: bool
    remote_errors: bool
    """Whether the server announced the ``errors`` extension."""
    features: frozenset[str]
    """The extensions both ends know (ours that the server announced)."""
    timeouts: tuple[float | None, float | None] | None = None
    """How long this client's requests without ``"dl"`` wait, as the server takes
    them, then the server's; None when it did not say (then every timeout travels)."""


def read_answer(t: int, d: Any) -> Agreement:
    """Read the server's first packet.

    Raises:
        HandshakeError: The server refused the client (an END before the answer).
        ProtocolError: Anything else than the CONNECTION answer.
    """
    if t == END:
        raise HandshakeError(read_end(d).get("m"))  # refused before admission
    if t != CONNECTION or type(d) is not dict:
        raise ProtocolError(f"expected the CONNECTION answer, got packet type {t}")
    announced = d.get("features")
    features = frozenset(f for f in FEATURES if isinstance(announced, list) and f in announced)
    timeouts = None
    pair = d.get("dl")
    if type(pair) is list and len(pair) == 2:
        (mine_ok, mine), (theirs_ok, theirs) = implied(pair[0]), implied(pair[1])
        if mine_ok and theirs_ok:
            timeouts = (mine, theirs)
    return Agreement(
        d,
        bool(d.get("messagepack")),
        bool(d.get("compress")),
        "errors" in features,
        features,
        timeouts,
    )


# ---------------------------------------------------------------------- END


def end(codec: PacketCodec | None, reason: Any, allow_reconnect: bool = False) -> bytes:
    """The END packet, framed; ``codec`` None before the CONNECTION exchange (plain JSON).

    A reason the codec cannot carry is sent as ``str(reason)``.
    """
    d = {"m": reason, "a": bool(allow_reconnect)}
    try:
        if codec is None:
            return frame(json_dumps({"t": END, "d": d}))
        return codec.encode(END, d)
    except TypeError:
        d["m"] = str(reason)
        if codec is None:
            return frame(json_dumps({"t": END, "d": d}))
        return codec.encode(END, d)


def read_end(d: Any) -> dict[str, Any]:
    """An END packet's ``d`` as ``{"m": reason, "a": allow_reconnect}`` (a bare reason is allowed)."""
    return d if type(d) is dict else {"m": d, "a": False}


def loss(
    peer_end: dict[str, Any] | None,
    close_reason: Any,
    exc: BaseException | None,
    destroyed: bool,
    features: frozenset[str] = frozenset(),
) -> tuple[Any, ConnectionClosedError]:
    """Why a connection is gone, and the error its waiters get (both drivers, both ends).

    The reason is the peer's END reason, else our own close or destroy
    reason, else the transport's exception, else ``"connection lost"``. After
    an END from a peer that announced ``retry``, the unanswered requests were
    not run (``executed=False``).
    """
    if peer_end is not None:
        reason: Any = peer_end.get("m")
    elif close_reason is not None:
        reason = close_reason
    elif exc is not None:
        reason = exc
    else:
        reason = "connection lost"
    if destroyed:
        return reason, ConnectionDestroyedError(reason)
    if peer_end is None:
        return reason, ConnectionClosedError(reason)
    executed = False if "retry" in features else None
    return reason, ConnectionClosedError(
        reason, allow_reconnect=bool(peer_end.get("a")), executed=executed
    )


# ---------------------------------------------------------------------- errors


def error_answer(
    codec: PacketCodec, nonce: Any, exc: BaseException, remote_errors: bool, *, own: bool = False
) -> bytes:
    """The RESPONSE that tells the requester its request failed with ``exc``, framed.

    A peer that announced the ``errors`` extension reads ``"e"`` as a
    ``RemoteError``; any other peer gets ``{"error": {...}}`` as the answer,
    a value it can read. With ``own``, ``exc`` is this library's own error
    (a ``call()`` with no worker, say): a peer of this library raises it as
    that class (``read_error``). A ``RemoteError`` is passed on as the
    error it carries.
    """
    error = error_fields(exc, own)
    if remote_errors:
        return frame(codec.encode_body({"t": RESPONSE, "d": None, "n": nonce, "e": error}))
    return codec.encode(RESPONSE, {"error": error}, nonce)


def error_fields(exc: BaseException, own: bool = False) -> dict[str, Any]:
    """The ``"e"`` of an error answer: ``{"type", "message"}`` (and, with ``own``, what
    rebuilds this library's error: ``"ipc": true`` and its attributes)."""
    if isinstance(exc, RemoteError):
        return {"type": exc.type, "message": exc.message}
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if own:
        error["ipc"] = True
        for name in ("option", "timeout", "reason", "service"):
            value = getattr(exc, name, None)
            if value is None or isinstance(value, (str, int, float)):
                if value is not None:
                    error[name] = value
            else:
                error[name] = str(value)
    return error


def read_error(packet: dict[str, Any]) -> IPCError | None:
    """The error a RESPONSE carries (``errors`` extension), or None.

    A ``RemoteError``, or the library's own error a server marked as such
    (``error_fields`` with ``own``): ``NoRespondersError``, ``RequestTimeoutError``,
    ``ConnectionClosedError`` or ``IPCError``.
    """
    error = packet.get("e")
    if error is None or type(error) is not dict:
        return None
    kind = str(error.get("type"))
    message = str(error.get("message", ""))
    if error.get("ipc") is True:
        if kind == "NoRespondersError":
            return NoRespondersError(str(error.get("service", "")), message or None)
        if kind == "RequestTimeoutError":
            timeout = error.get("timeout")
            seconds = float(timeout) if isinstance(timeout, (int, float)) else 0.0
            return RequestTimeoutError(seconds)
        if kind in ("ConnectionClosedError", "ConnectionDestroyedError"):
            return ConnectionClosedError(error.get("reason", message))
        if kind == "IPCError":
            option = error.get("option")
            return IPCError(message, option=option if isinstance(option, str) else None)
    return RemoteError(kind, message)


# ---------------------------------------------------------------------- pub/sub


def topic_list(value: Any) -> list[str] | None:
    """The topics ``value`` names (a str, or a non-empty list of str); None if it names none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def subscribe_request(topic: str | list[str], group: str | None = None) -> dict[str, Any]:
    """The request that subscribes to ``topic`` (one or several), in worker ``group`` if given."""
    return {"sub": topic} if group is None else {"sub": topic, "group": group}


def unsubscribe_request(topic: str | list[str], group: str | None = None) -> dict[str, Any]:
    """The request that unsubscribes from ``topic`` (one or several), or leaves ``group``."""
    return {"unsub": topic} if group is None else {"unsub": topic, "group": group}


def stats_request(nonce: str, connections: bool = False) -> dict[str, Any]:
    """The REQUEST packet that asks a server of this library for its ``stats()``."""
    return {"t": REQUEST, "d": connections, "n": nonce, "x": STATS}


def publish_request(topic: str, message: Any) -> dict[str, Any]:
    """The request that publishes ``message`` to ``topic``."""
    return {"pub": topic, "message": message}


PUBSUB_KEYS = frozenset({"sub", "unsub", "pub"})
"""A request dict with none of these keys is not a pub/sub request (a cheap first test;
``read_pubsub`` decides)."""


def read_pubsub(data: Any, groups: bool = False) -> tuple[str, Any, Any] | None:
    """``(kind, topics or topic, message or group)`` if a request is a pub/sub one, else None.

    Only the exact shapes are: ``{"sub": topics}``, ``{"unsub": topics}``,
    ``{"pub": topic, "message": m}`` (or ``{"pub": topic}``, which a Node peer
    sends for an undefined message), and nothing else in the dict; with
    ``groups`` (the peer announced the extension) also ``{"sub": topics,
    "group": g}`` and ``{"unsub": topics, "group": g}``. Any other request,
    ``{"user": "ann", "sub": "premium"}`` included, is the handlers'.
    ``kind`` is ``"sub"``, ``"unsub"`` or ``"pub"``; the second item is what
    the request named, unchecked (``topic_list`` reads it); the third is the
    message of a ``pub``, the group of a ``sub`` or ``unsub`` (None: none).
    """
    if type(data) is not dict:
        return None
    size = len(data)
    if size == 1:
        if "sub" in data:
            return "sub", data["sub"], None
        if "unsub" in data:
            return "unsub", data["unsub"], None
        if "pub" in data:
            return "pub", data["pub"], None
    elif size == 2:
        if "pub" in data and "message" in data:
            return "pub", data["pub"], data["message"]
        if groups and "group" in data:
            if "sub" in data:
                return "sub", data["sub"], data["group"]
            if "unsub" in data:
                return "unsub", data["unsub"], data["group"]
    return None


def pubsub_reply(ok: bool) -> dict[str, Any]:
    """The answer to a pub/sub request."""
    return {"result": ok}


def succeeded(reply: Any) -> bool:
    """Whether a pub/sub reply says ``{"result": true}``."""
    return type(reply) is dict and reply.get("result") is True


def delivery(topic: str, message: Any) -> dict[str, Any]:
    """The MESSAGE data that delivers a published message to a subscriber."""
    return {"pub": topic, "message": message}


def published_topic(data: Any) -> str | None:
    """The topic if a MESSAGE is a pub/sub delivery, else None.

    A delivery is ``{"pub": topic, "message": message}``; its message is
    ``data["message"]``, and may be falsy (0, "", None, False).
    """
    if data.__class__ is dict:
        topic = data.get("pub")
        if topic.__class__ is str and "message" in data:
            return topic
    return None


# ---------------------------------------------------------------------- the pattern extensions

MAX_WINDOW = 10_000
"""The largest credit window a stream may ask for (``"w"``); more is read as this."""


def extension_packet(t: int, data: Any, nonce: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A REQUEST (or MESSAGE) with extension ``fields`` beside ``t``, ``d``, ``n``: ``"x"``
    (what it is), ``"s"`` (a service), ``"w"`` (a window), ``"dl"`` (a deadline)."""
    packet = {"t": t, "d": data, "n": nonce}
    packet.update(fields)
    return packet


def request_fields(
    x: str | None, timeout: float | None, *, cancel: bool, **more: Any
) -> dict[str, Any] | None:
    """The extension fields of a request: ``"x"`` and ``more`` (if ``x``), and ``"dl"``
    (its timeout, for a peer that announced ``cancel``); None when there are none."""
    fields: dict[str, Any] = {}
    if x is not None:
        fields["x"] = x
        fields.update(more)
    if cancel and timeout is not None:
        fields["dl"] = timeout
    return fields or None


def call_fields(name: str) -> dict[str, Any]:
    """The extension fields of a call to service ``name`` (caller to server, server to worker)."""
    return {"x": CALL, "s": name}


def read_deadline(packet: dict[str, Any]) -> float | None:
    """The seconds a REQUEST's requester waits (``"dl"``), when it is a positive number."""
    seconds = packet.get("dl")
    if seconds.__class__ in (int, float) and 0 < seconds < 1e12:
        return float(seconds)
    return None


def read_window(packet: dict[str, Any]) -> int:
    """The credit window a stream REQUEST asks for (``"w"``), within 1 and ``MAX_WINDOW``."""
    window = packet.get("w")
    if window.__class__ is int and window > 0:
        return min(window, MAX_WINDOW)
    return 1


def cancel_notice(nonce: str) -> dict[str, Any]:
    """The MESSAGE a requester sends when it gives up on request ``nonce`` (``cancel``)."""
    return {"t": MESSAGE, "n": nonce, "x": CANCEL}


def credit_notice(nonce: str, count: int) -> dict[str, Any]:
    """The MESSAGE that lets the producer of stream ``nonce`` send ``count`` items more."""
    return {"t": MESSAGE, "d": count, "n": nonce, "x": CREDIT}


def stream_item(nonce: str, item: Any) -> dict[str, Any]:
    """The RESPONSE that carries one item of stream ``nonce``."""
    return {"t": RESPONSE, "d": item, "n": nonce, "x": ITEM}


def stream_last(nonce: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RESPONSE that ends stream ``nonce`` (with ``error``: the producer raised it)."""
    packet: dict[str, Any] = {"t": RESPONSE, "d": None, "n": nonce, "x": LAST}
    if error is not None:
        packet["e"] = error
    return packet


def stream_answer(reply: Any) -> list[Any]:
    """The items of a plain answer to a stream request (a peer without ``streams``, or a
    handler that answered once): a list is its items, None is none, anything else one."""
    if reply is None:
        return []
    if isinstance(reply, list):
        return reply
    return [reply]


# ---------------------------------------------------------------------- dispatch


class PacketDispatcher:
    """Routes each decoded packet of an admitted connection to the hook of its type.

    Both drivers inherit it (the asyncio ``Endpoint``, the blocking
    connection) and define the hooks; ``_dispatch`` is the one place that
    knows which type goes where.
    """

    __slots__ = ()

    features: frozenset[str]  # the extensions both ends announced (set by the driver)

    def _dispatch(self, t: int, d: Any, n: Any, packet: dict[str, Any]) -> None:
        """Hand a decoded packet to the hook of its type."""
        if REQUEST <= t <= PONG and n.__class__ is not str:
            # Nonces are strings (docs/protocol.md): anything else can be neither paired nor echoed.
            self._on_bad_packet(
                ProtocolError(f"packet of type {t} with a nonce that is not a string")
            )
        elif t == REQUEST:
            self._on_request_packet(d, n, packet)
        elif t == RESPONSE:
            self._on_response(n, packet)
        elif t == MESSAGE:
            if len(packet) > 2 and self._on_message_extension(packet):
                return
            self._on_message(d)
        elif t == PING:
            self._on_ping(d, n)
        elif t == PONG:
            self._on_pong(n)
        elif t == END:
            self._on_end(read_end(d))
        else:
            self._on_bad_packet(ProtocolError("unexpected CONNECTION packet after the handshake"))

    # The hooks, one per packet type.

    def _on_message(self, d: Any) -> None:
        raise NotImplementedError

    def _on_message_extension(self, packet: dict[str, Any]) -> bool:
        """A MESSAGE with more than ``t`` and ``d``: True if it is an extension's (a
        cancel notice, a credit: ``extensions.Extensions``), which is never a message
        event. Here, a driver that acts on none: such a message from a peer of this
        library is dropped; a Node peer's extra keys mean nothing."""
        return bool(self.features) and "x" in packet

    def _on_request_packet(self, d: Any, n: str, packet: dict[str, Any]) -> None:
        raise NotImplementedError

    def _on_response(self, n: str, packet: dict[str, Any]) -> None:
        raise NotImplementedError

    def _on_ping(self, d: Any, n: str) -> None:
        raise NotImplementedError

    def _on_pong(self, n: str) -> None:
        raise NotImplementedError

    def _on_end(self, d: dict[str, Any]) -> None:
        raise NotImplementedError

    def _on_bad_packet(self, exc: ProtocolError) -> None:
        """A well-formed packet that cannot be acted on: report it, keep the connection."""
        raise NotImplementedError
