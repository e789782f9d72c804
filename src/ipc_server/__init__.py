"""ipc_server: messaging between processes, wire-compatible with Node's net-ipc.

One server, many clients, over Unix domain sockets, Windows named pipes or
TCP/TLS: request/response both ways, one-way messages, publish/subscribe,
ping. See the README for a tour and ``docs/`` for the guide.
"""

from __future__ import annotations

from ._compiled import compiled
from .client import IPCClient, Subscription
from .clientcore import IPCClientStatus
from .errors import (
    AddressInUseError,
    ConnectionClosedError,
    ConnectionDestroyedError,
    HandshakeError,
    IPCError,
    MessageTooLargeError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from .events import STOP, IPCEvents, Respond
from .packets import IPCMessageType
from .server import IPCConnection, IPCServer

__version__ = "0.1.0"

__all__ = (
    "STOP",
    "AddressInUseError",
    "ConnectionClosedError",
    "ConnectionDestroyedError",
    "HandshakeError",
    "IPCClient",
    "IPCClientStatus",
    "IPCConnection",
    "IPCError",
    "IPCEvents",
    "IPCMessageType",
    "IPCServer",
    "MessageTooLargeError",
    "NoRespondersError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
    "Respond",
    "Subscription",
    "compiled",
)
