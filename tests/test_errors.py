"""The exception tree and the fields errors carry (STYLE.md, Errors)."""

from __future__ import annotations

import errno

import pytest

from ipc_server import (
    AddressInUseError,
    ConnectionClosedError,
    ConnectionDestroyedError,
    IPCError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from ipc_server.errors import HandshakeError, MessageTooLargeError


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ConnectionClosedError, (IPCError,)),
        (ConnectionDestroyedError, (ConnectionClosedError, IPCError)),
        (RequestTimeoutError, (IPCError, TimeoutError)),
        (AddressInUseError, (IPCError, OSError)),
        (ProtocolError, (IPCError, ValueError)),
        (MessageTooLargeError, (ProtocolError, IPCError, ValueError)),
        (HandshakeError, (IPCError,)),
        (RemoteError, (IPCError,)),
        (IPCError, (Exception,)),
    ],
)
def test_error_tree(cls: type[BaseException], bases: tuple[type[BaseException], ...]) -> None:
    """Each error sits where the tree in errors.py draws it, with its stdlib co-base."""
    for base in bases:
        assert issubclass(cls, base)


def test_unrelated_branches() -> None:
    """Errors of different branches do not catch each other."""
    assert not issubclass(RemoteError, ProtocolError)
    assert not issubclass(ProtocolError, ConnectionClosedError)
    assert not issubclass(RequestTimeoutError, ConnectionClosedError)
    assert not issubclass(ConnectionClosedError, OSError)


def test_connection_closed_fields() -> None:
    """ConnectionClosedError carries reason and allow_reconnect, and says the reason."""
    err = ConnectionClosedError("server shutting down", allow_reconnect=True)
    assert err.reason == "server shutting down"
    assert err.allow_reconnect is True
    assert "server shutting down" in str(err)
    plain = ConnectionClosedError()
    assert (plain.reason, plain.allow_reconnect) == (None, False)
    assert str(plain) == "connection closed"


def test_connection_closed_reason_exception() -> None:
    """An exception as reason is named with its type in the message."""
    err = ConnectionClosedError(BrokenPipeError("pipe"))
    assert "BrokenPipeError: pipe" in str(err)


def test_connection_destroyed_fields() -> None:
    """ConnectionDestroyedError has the same fields and is caught as ConnectionClosedError."""
    with pytest.raises(ConnectionClosedError) as info:
        raise ConnectionDestroyedError("bye")
    assert info.value.reason == "bye"
    assert info.value.allow_reconnect is False


def test_request_timeout_fields() -> None:
    """RequestTimeoutError carries timeout and is caught by except TimeoutError."""
    with pytest.raises(TimeoutError) as info:
        raise RequestTimeoutError(2.5)
    assert isinstance(info.value, RequestTimeoutError)
    assert info.value.timeout == 2.5
    assert "2.5 s" in str(info.value)
    assert "ping" in str(RequestTimeoutError(1, "ping"))


def test_address_in_use_fields() -> None:
    """AddressInUseError carries the address and the OS's EADDRINUSE errno."""
    with pytest.raises(OSError, match="in use") as info:
        raise AddressInUseError("/tmp/app.sock")
    err = info.value
    assert isinstance(err, AddressInUseError)
    assert err.address == "/tmp/app.sock"
    assert err.errno == errno.EADDRINUSE
    assert "/tmp/app.sock" in str(err)


def test_protocol_error_is_value_error() -> None:
    """ProtocolError is caught by except ValueError."""
    with pytest.raises(ValueError, match="bad"):
        raise ProtocolError("bad packet")


def test_message_too_large_fields() -> None:
    """MessageTooLargeError carries size and limit and names both."""
    err = MessageTooLargeError(2000, 1000)
    assert (err.size, err.limit) == (2000, 1000)
    assert "2000" in str(err)
    assert "1000" in str(err)
    assert "inflated" in str(MessageTooLargeError(5, 4, "inflated packet"))


def test_remote_error_fields() -> None:
    """RemoteError carries the remote type and message."""
    err = RemoteError("KeyError", "'missing'")
    assert (err.type, err.message) == ("KeyError", "'missing'")
    assert str(err) == "KeyError: 'missing'"
    assert str(RemoteError("Error", "")) == "Error"


def test_handshake_error_fields() -> None:
    """HandshakeError carries the reason."""
    err = HandshakeError("client refused: nope")
    assert err.reason == "client refused: nope"
    assert "client refused: nope" in str(err)


def test_errors_chain_their_cause() -> None:
    """Errors raised from a cause keep it (raise ... from exc)."""
    cause = OSError("reset")

    def fail() -> None:
        try:
            raise cause
        except OSError as exc:
            raise ConnectionClosedError(exc) from exc

    with pytest.raises(ConnectionClosedError) as info:
        fail()
    assert info.value.__cause__ is cause
    assert info.value.reason is cause
