"""The public surface: exactly the public names, and the seed's numbers."""

from __future__ import annotations

import enum

import pytest

import ipc_server
from ipc_server import IPCClientStatus, IPCMessageType
from ipc_server.events import STOP

PUBLIC_NAMES = (
    "IPCServer",
    "IPCClient",
    "IPCConnection",
    "IPCClientStatus",
    "IPCMessageType",
    "IPCEvents",
    "STOP",
    "IPCError",
    "ConnectionClosedError",
    "ConnectionDestroyedError",
    "RequestTimeoutError",
    "AddressInUseError",
    "ProtocolError",
    "RemoteError",
    # Beyond SPEC section 1: what users need to catch errors and type handlers.
    "HandshakeError",
    "MessageTooLargeError",
    "NoRespondersError",
    "Subscription",
    "Respond",
    "compiled",
)


def test_all_is_exactly_the_spec_names() -> None:
    """ipc_server.__all__ holds the public names, each once, and no others."""
    assert isinstance(ipc_server.__all__, tuple)
    assert len(ipc_server.__all__) == len(set(ipc_server.__all__))
    assert sorted(ipc_server.__all__) == sorted(PUBLIC_NAMES)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_spec_name_imports(name: str) -> None:
    """Each exported name is an attribute of the package."""
    assert getattr(ipc_server, name) is not None


def test_star_import() -> None:
    """from ipc_server import * gives exactly the exported names."""
    namespace: dict[str, object] = {}
    exec("from ipc_server import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC_NAMES)


def test_stop_is_the_emitters() -> None:
    """The exported STOP is the one the emitter checks for."""
    assert ipc_server.STOP is STOP


@pytest.mark.parametrize(
    ("member", "number"),
    [
        ("IDLE", 0),
        ("CONNECTING", 1),
        ("CONNECTED", 2),
        ("READY", 3),
        ("DISCONNECTED", 4),
        ("RECONNECTING", 5),
    ],
)
def test_client_status_numbers(member: str, number: int) -> None:
    """IPCClientStatus has the seed's numbers."""
    assert IPCClientStatus[member] == number
    assert IPCClientStatus(number).name == member


def test_client_status_complete() -> None:
    """IPCClientStatus has exactly the six statuses, as an IntEnum."""
    assert issubclass(IPCClientStatus, enum.IntEnum)
    assert [s.value for s in IPCClientStatus] == list(range(6))


@pytest.mark.parametrize(
    ("member", "number"),
    [
        ("CONNECTION", 0),
        ("MESSAGE", 1),
        ("REQUEST", 2),
        ("RESPONSE", 3),
        ("PING", 4),
        ("PONG", 5),
        ("END", 6),
    ],
)
def test_message_type_numbers(member: str, number: int) -> None:
    """IPCMessageType has the wire protocol's numbers (docs/protocol.md)."""
    assert IPCMessageType[member] == number
    assert IPCMessageType(number).name == member


def test_message_type_complete() -> None:
    """IPCMessageType has exactly the seven packet types, as an IntEnum."""
    assert issubclass(IPCMessageType, enum.IntEnum)
    assert [t.value for t in IPCMessageType] == list(range(7))


@pytest.mark.parametrize(
    "name", ["ready", "error", "connect", "disconnect", "close", "status", "message", "request"]
)
def test_builtin_event_names(name: str) -> None:
    """IPCEvents names each built-in event of servers and clients."""
    assert getattr(ipc_server.IPCEvents, name.upper()) == name
