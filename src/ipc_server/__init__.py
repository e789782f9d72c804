"""ipc_server: messaging between processes, wire-compatible with Node's net-ipc.

One server, many clients, over Unix domain sockets, Windows named pipes or
TCP/TLS: request/response both ways, one-way messages, publish/subscribe,
ping. See the README for a tour and ``docs/`` for the guide.
"""

from __future__ import annotations

from .client import IPCClient, IPCClientStatus
from .errors import (
    AddressInUseError,
    ConnectionClosedError,
    ConnectionDestroyedError,
    IPCError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from .events import STOP, IPCEvents
from .protocol import IPCMessageType
from .server import IPCConnection, IPCServer

__version__ = "0.1.0"

__all__ = (
    "STOP",
    "AddressInUseError",
    "ConnectionClosedError",
    "ConnectionDestroyedError",
    "IPCClient",
    "IPCClientStatus",
    "IPCConnection",
    "IPCError",
    "IPCEvents",
    "IPCMessageType",
    "IPCServer",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
)
