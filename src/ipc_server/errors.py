"""The exception hierarchy of ipc_server.

::

    IPCError
    ├── ConnectionClosedError          the connection went away (gracefully or not)
    │   └── ConnectionDestroyedError   ... because ``destroy()`` was called
    ├── RequestTimeoutError            (also a TimeoutError) no answer in time
    ├── AddressInUseError              (also an OSError) a live server owns the address
    ├── ProtocolError                  (also a ValueError) the peer sent something malformed
    │   └── MessageTooLargeError       ... a packet over a bound; ``option`` names it
    ├── HandshakeError                 the CONNECTION exchange failed or was refused
    ├── NoRespondersError              a call() to a service no worker serves
    └── RemoteError                    the peer's handler raised; carries ``type`` and ``message``

Misuse by the caller (a wrong argument) raises plain ``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

import errno

__all__ = [
    "AddressInUseError",
    "ConnectionClosedError",
    "ConnectionDestroyedError",
    "HandshakeError",
    "IPCError",
    "MessageTooLargeError",
    "NoRespondersError",
    "ProtocolError",
    "RemoteError",
    "RequestTimeoutError",
]


class IPCError(Exception):
    """Root of every error this library raises on purpose.

    Attributes:
        option: When the error says a bound was crossed, the option that sets
            it (``"keepalive_interval"``, ``"max_queued"``, ...); else None.
    """

    option: str | None = None

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        if option is not None:
            self.option = option


class ConnectionClosedError(IPCError):
    """The connection is closed, or closed while waiting for an answer.

    Attributes:
        reason: What the closing side said (the END packet's ``m``), or a
            description of the failure.
        allow_reconnect: Whether the closing side allowed a reconnect.
        executed: For a request that failed with it: False when the peer
            guarantees it did not run it (a server of this library that closed:
            retrying is safe), None when that is not known.
    """

    def __init__(
        self, reason: object = None, *, allow_reconnect: bool = False, executed: bool | None = None
    ) -> None:
        self.reason = reason
        self.allow_reconnect = allow_reconnect
        self.executed = executed
        super().__init__(self._text(reason))

    @staticmethod
    def _text(reason: object) -> str:
        if reason is None:
            return "connection closed"
        if isinstance(reason, BaseException):
            return f"connection closed: {type(reason).__name__}: {reason}"
        return f"connection closed: {reason}"


class ConnectionDestroyedError(ConnectionClosedError):
    """The connection was destroyed: queued writes dropped, pending requests failed."""


class RequestTimeoutError(IPCError, TimeoutError):
    """A request or ping got no answer within its timeout.

    Attributes:
        timeout: The timeout in seconds that ran out.
    """

    def __init__(self, timeout: float, what: str = "request") -> None:
        self.timeout = timeout
        super().__init__(f"{what} timed out after {timeout:g} s")


class AddressInUseError(IPCError, OSError):
    """``start()`` found a live server listening on the address.

    Attributes:
        address: The address that is taken.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        OSError.__init__(
            self, errno.EADDRINUSE, f"address already in use by a live server: {address}"
        )


class ProtocolError(IPCError, ValueError):
    """The peer sent bytes that do not follow the wire protocol."""


class MessageTooLargeError(ProtocolError):
    """A packet is larger than a bound: ``max_message_size`` (bytes, before and
    after inflating), ``max_handshake_size`` (bytes, before admission) or
    ``max_packet_objects`` (dicts and lists in one packet).

    Attributes:
        size: The size the packet announced (or reached while inflating, or
            the containers counted when the count stopped).
        limit: The limit it crossed.
        option: The option that sets the limit.
    """

    def __init__(
        self,
        size: int,
        limit: int,
        what: str = "packet",
        *,
        option: str = "max_message_size",
        unit: str = "bytes",
    ) -> None:
        self.size = size
        self.limit = limit
        self.option = option
        super().__init__(f"{what} of {size} {unit} exceeds {option}={limit}")


class HandshakeError(IPCError):
    """The connection handshake failed: wrong preamble, timeout, or refused by the server.

    Attributes:
        reason: Why, as the server said it (for a refusal) or as seen locally.
    """

    def __init__(self, reason: object) -> None:
        self.reason = reason
        super().__init__(f"handshake failed: {reason}")


class NoRespondersError(IPCError):
    """A ``call()`` named a service that no worker serves (raised at once, not a timeout).

    Args:
        service: The service's name.
        message: What to say instead of "no worker serves ..." (why nobody
            took it: the broker is unreachable, say).

    Attributes:
        service: The service's name.
    """

    def __init__(self, service: str, message: str | None = None) -> None:
        self.service = service
        super().__init__(message or f"no worker serves {service!r}")


class RemoteError(IPCError):
    """The peer's request handler raised an exception.

    Attributes:
        type: The exception's class name on the peer.
        message: ``str()`` of the exception on the peer.
    """

    def __init__(self, type: str, message: str) -> None:
        self.type = type
        self.message = message
        super().__init__(f"{type}: {message}" if message else type)
