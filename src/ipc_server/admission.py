"""Who the server lets in, and how many: the rules checked as a peer is accepted, without I/O.

``IPCServer`` asks ``at_accept`` when the loop hands it a new peer (the
protocol factory runs at accept, before a byte is read and before a TLS
handshake), then ``uid_refusal`` once the peer's credentials are known. Each
answers None (go on) or a ``Refusal``: the reason the peer gets in its END
packet, and the text of the ``HandshakeError`` the server's ``error`` event
reports, which names the option that refused it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

from .address import Address

__all__ = [
    "DEFAULT_MAX_HANDSHAKING",
    "OUT_OF_DESCRIPTORS",
    "TLS_HANDSHAKE_TIMEOUT",
    "WINDOWS_MAX_CONNECTIONS",
    "Refusal",
    "admitted_uids",
    "at_accept",
    "checked_uids",
    "default_max_connections",
    "uid_refusal",
]

DEFAULT_MAX_HANDSHAKING = 256
"""Default bound on peers accepted but not yet admitted (``max_handshaking``)."""

WINDOWS_MAX_CONNECTIONS = 10_000
"""``max_connections`` on Windows, which has no per-process descriptor limit to derive it from."""

OUT_OF_DESCRIPTORS = "server full: out of file descriptors"
"""The END reason of a peer turned away because the process has no descriptor left."""

TLS_HANDSHAKE_TIMEOUT = 60.0
"""How long the loops give a TLS handshake when ``handshake_timeout`` is None (their default)."""


class Refusal(NamedTuple):
    """Why a peer is turned away."""

    reason: str
    """For the peer: the reason in its END packet (its ``HandshakeError``)."""
    error: str
    """For the server's ``error`` event: what happened, naming the option."""


def default_max_connections(soft_limit: int | None = None) -> int:
    """``max_connections`` when it is not given: the descriptor limit, less headroom.

    Each connection holds one descriptor. ``limit - max(64, limit // 10)``
    leaves at least 64 (a tenth of a large limit) for the listening sockets,
    the application's own files and sockets, and peers being turned away, so
    the server refuses a client ("server full") before the process runs out.
    ``soft_limit`` defaults to the process's ``RLIMIT_NOFILE`` soft limit.
    """
    if soft_limit is None:
        if sys.platform == "win32":  # pragma: no cover - Windows only
            return WINDOWS_MAX_CONNECTIONS
        import resource

        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
            soft_limit = 1 << 20
    return max(1, soft_limit - max(64, soft_limit // 10))


def at_accept(
    admitted: int, handshaking: int, max_connections: int | None, max_handshaking: int | None
) -> Refusal | None:
    """A new peer, with ``admitted`` clients and ``handshaking`` peers not yet admitted."""
    if max_connections is not None and admitted + handshaking >= max_connections:
        reason = f"server full: max_connections={max_connections}"
        return Refusal(reason, f"client refused: {reason}")
    if max_handshaking is not None and handshaking >= max_handshaking:
        return Refusal(
            "server busy",
            f"client refused: server busy, max_handshaking={max_handshaking} peers "
            "are accepted but not yet admitted",
        )
    return None


def checked_uids(allowed_uids: Iterable[int] | None) -> frozenset[int] | None:
    """The ``allowed_uids`` option as a set.

    Raises:
        TypeError: Not an iterable of ints.
        ValueError: A negative uid.
    """
    if allowed_uids is None:
        return None
    if isinstance(allowed_uids, (str, bytes)) or not isinstance(allowed_uids, Iterable):
        raise TypeError(f"allowed_uids must be an iterable of uids (int), not {allowed_uids!r}")
    uids = frozenset(allowed_uids)
    for uid in uids:
        if isinstance(uid, bool) or not isinstance(uid, int):
            raise TypeError(f"allowed_uids must hold ints, not {uid!r}")
        if uid < 0:
            raise ValueError(f"allowed_uids must hold uids >= 0, not {uid!r}")
    return uids


def admitted_uids(address: Address, allowed_uids: Iterable[int] | None) -> frozenset[int] | None:
    """The uids a server at ``address`` admits; None: anyone who can reach it.

    ``allowed_uids`` applies to every Unix socket. Without it, an abstract
    socket (which has no file mode to keep others out) admits the server's
    own uid and root; a socket file is guarded by its mode (``socket_mode``).
    TCP peers have no uid; Windows pipes admit the current user only.
    """
    if address.kind != "unix":
        return None
    if allowed_uids is not None:
        return frozenset(allowed_uids)
    if address.abstract:
        return frozenset({os.geteuid(), 0})
    return None


def uid_refusal(uid: int | None, allowed: frozenset[int] | None) -> Refusal | None:
    """The peer runs as ``uid`` (None: the OS did not tell) and ``allowed`` may connect."""
    if allowed is None or (uid is not None and uid in allowed):
        return None
    who = "uid unknown" if uid is None else f"uid {uid}"
    reason = f"{who} is not allowed"
    names = ", ".join(str(u) for u in sorted(allowed))
    return Refusal(reason, f"client refused: {reason} (allowed_uids: {names})")
