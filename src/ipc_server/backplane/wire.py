"""What crosses the broker: msgpack envelopes, without I/O.

Each NATS message of the backplane carries one msgpack array whose first item
is the envelope version (1). Its other items, by subject:

================ ===========================================================
topic            ``[1, origin, epoch, seq, [message, ...], served, start]``:
                 one or more messages of one stream, numbered from ``seq``
                 on (what the outbox held of it, sent as one); ``served``
                 is true when the origin gave them to its own worker groups
                 already (its broker was down), so other servers' worker
                 groups drop them and a group gets each once; ``start`` is
                 the origin's count of heartbeats sent when the stream (this
                 epoch of the topic) began (see ``delivery``)
service          ``[1, origin, timeout, data]`` (the reply subject on the
                 NATS message says where to answer)
survey           ``[1, origin, timeout, data]``
answer           ``[1, ACK, server]`` (a worker took the call),
                 ``[1, OK, server, value]``, ``[1, ERR, server, type, text]``,
                 ``[1, ANSWERS, server, [answer, ...]]``
heartbeat        ``[1, BEAT | HELLO | BYE, server, epoch, interval, beat]``
                 (``beat``: this heartbeat's number, from 1, per server)
cancellation     ``[1, reply]`` (sent to ``<ns>.r.<worker>.k``)
================ ===========================================================

Messages are encoded as the library's msgpack codec does (bytes stay bytes,
sets become lists, timezone-aware datetimes are timestamps). What msgpack
cannot carry does not cross: integers beyond 64 bits, naive datetimes, and
objects of any other class; tuples arrive as lists, and a map's keys keep
their type (a JSON client's keys are strings anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from ..codecs import msgpack_packer
from ..errors import ProtocolError

__all__ = [
    "ACK",
    "ANSWERS",
    "BEAT",
    "BYE",
    "ERR",
    "HELLO",
    "OK",
    "VERSION",
    "Envelopes",
    "Published",
    "read",
    "read_publish",
]

VERSION = 1

ACK, OK, ERR, ANSWERS = 0, 1, 2, 3
"""Kinds of answer on a reply subject."""

BEAT, HELLO, BYE = 0, 1, 2
"""Kinds of heartbeat: alive; alive and answer me at once (after connecting); leaving."""

_PUBLISH_HEAD = b"\x97\x01"  # fixarray of 7, then the version


def read(data: bytes, least: int) -> list[Any]:
    """The envelope in ``data``: a list of at least ``least`` items, version 1.

    Raises:
        ProtocolError: ``data`` is not such an envelope.
    """
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)
    except Exception as exc:  # msgpack raises several types for a malformed body
        raise ProtocolError(f"malformed backplane message ({type(exc).__name__})") from exc
    if not isinstance(items, list) or len(items) < least or items[0] != VERSION:
        raise ProtocolError("not a backplane envelope of version 1")
    return items


class Published(NamedTuple):
    """A published message as it crossed the broker."""

    origin: str
    epoch: int
    seq: int
    """The first message's number; the others follow it."""
    messages: list[Any]
    served: bool
    """The origin's worker groups had them already."""
    start: int
    """The origin's heartbeat count when the stream began."""


def read_publish(data: bytes) -> Published:
    """The published message in ``data``.

    Raises:
        ProtocolError: ``data`` is not a well-formed publish envelope.
    """
    items = read(data, 7)
    _, origin, epoch, seq, messages, served, start = items[:7]
    if (
        not isinstance(origin, str)
        or type(epoch) is not int
        or type(seq) is not int
        or seq < 1
        or type(messages) is not list
        or not messages
        or type(start) is not int
    ):
        raise ProtocolError("malformed publish envelope")
    return Published(origin, epoch, seq, messages, served is True, start)


class Envelopes:
    """Builds the envelopes one server sends (its own packer: not shared across threads).

    Every method may raise what msgpack raises for a value it cannot carry
    (``TypeError``, ``ValueError``, ``OverflowError``).
    """

    def __init__(self, origin: str) -> None:
        self.origin = origin
        packer = msgpack_packer()
        self._pack: Callable[[Any], bytes] = packer.pack
        self._array: Callable[[int], bytes] = packer.pack_array_header
        self.head = _PUBLISH_HEAD + self._pack(origin)
        """How each publish envelope of this origin begins (its own come back by it)."""
        self.overhead = len(self.head) + 33
        """A publish envelope's bytes beyond its bodies, at most (epoch, seq and start
        take 9 bytes each at most, the list head 5, the flag 1)."""

    def body(self, message: Any) -> bytes:
        """``message`` alone, encoded; the first step of a publish (it may fail)."""
        return self._pack(message)

    def publish(self, epoch: int, seq: int, bodies: list[bytes], served: bool, start: int) -> bytes:
        """A publish envelope around ``bodies`` from ``body()``, numbered from ``seq``
        on (``served``: this server's worker groups had them already; ``start``:
        see ``Published``)."""
        pack = self._pack
        flag = b"\xc3" if served else b"\xc2"
        return b"".join(
            (
                self.head,
                pack(epoch),
                pack(seq),
                self._array(len(bodies)),
                *bodies,
                flag,
                pack(start),
            )
        )

    def request(self, timeout: float | None, data: Any) -> bytes:
        """A call to a service or a survey: who asks, how long it waits, and what."""
        return self._pack([VERSION, self.origin, timeout, data])

    def ack(self) -> bytes:
        """This worker took the call (so the caller can tell if it goes away)."""
        return self._pack([VERSION, ACK, self.origin])

    def ok(self, value: Any) -> bytes:
        return self._pack([VERSION, OK, self.origin, value])

    def error(self, type_name: str, text: str) -> bytes:
        return self._pack([VERSION, ERR, self.origin, type_name, text])

    def answers(self, answers: list[Any]) -> bytes:
        return self._pack([VERSION, ANSWERS, self.origin, answers])

    def heartbeat(self, kind: int, epoch: int, interval: float, beat: int) -> bytes:
        return self._pack([VERSION, kind, self.origin, epoch, interval, beat])

    def cancel(self, reply: str) -> bytes:
        return self._pack([VERSION, reply])
