"""Sockets and pipes (with ``listening.py``, the only modules that know them).

``connect`` and ``dial`` turn an ``ipc_server.address.Address`` into an
asyncio transport or a blocking socket for Unix sockets, TCP, TLS and Windows
named pipes; ``listen`` (from ``listening``) into a listening server. Peer
credentials and ``SO_KEEPALIVE`` are here too. Windows code stays in the
``_pipe_*`` functions at the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as _ssl
import struct
import sys
from typing import Any, NamedTuple

from .address import Address
from .listening import Listener, ProtocolFactory, listen

__all__ = [
    "Listener",
    "PeerCredentials",
    "accepted_peer",
    "connect",
    "dial",
    "listen",
    "peer_credentials",
    "release_lost",
    "socket_credentials",
]

_INET = (socket.AF_INET, socket.AF_INET6)


class PeerCredentials(NamedTuple):
    """Who is at the other end of a local connection, as the OS tells.

    Attributes:
        pid: Process id (None where the OS does not say).
        uid: User id (None on Windows).
        gid: Group id (None on Windows).
    """

    pid: int | None
    uid: int | None
    gid: int | None


def peer_credentials(transport: asyncio.BaseTransport) -> PeerCredentials | None:
    """The peer's pid/uid/gid for a Unix socket or pipe; None for TCP or when unknown."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        pipe = transport.get_extra_info("pipe")  # asyncio's key for the PipeHandle
        if pipe is not None and sys.platform == "win32":  # pragma: no cover - Windows only
            return _pipe_client_pid(pipe)
        return None
    return socket_credentials(sock)


def accepted_peer(transport: asyncio.BaseTransport) -> PeerCredentials | None:
    """What the server does with each accepted connection at the socket level.

    A TCP connection gets ``SO_KEEPALIVE`` (the kernel then notices a peer
    that vanished without a word); returns ``peer_credentials(transport)``.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in _INET:
        _keep_alive(sock)
        return None
    return peer_credentials(transport)


def _keep_alive(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def socket_credentials(sock: Any) -> PeerCredentials | None:
    """The peer's pid/uid/gid for a Unix socket (a ``socket.socket`` or the loop's
    stand-in for one); None for TCP or when the OS does not tell."""
    if sock.family != getattr(socket, "AF_UNIX", None):
        return None
    try:
        if hasattr(socket, "SO_PEERCRED"):  # Linux
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
            return PeerCredentials(pid, uid, gid)
        if sys.platform == "darwin":  # pragma: no cover - macOS only
            return _darwin_peer(sock)
    except OSError:
        return None
    return None  # pragma: no cover - other systems


def release_lost(transport: asyncio.BaseTransport) -> None:
    """Mark a transport whose connection is lost as closed, where the loop does not.

    Python 3.10's TLS transport is not marked closed when its peer hangs up
    and warns ("unclosed transport") when it is collected; closing it then
    only sets that mark. Other transports are closed already: left alone.
    """
    if sys.version_info < (3, 11) and not transport.is_closing():  # pragma: no cover - 3.10
        transport.close()


def _darwin_peer(sock: socket.socket) -> PeerCredentials:  # pragma: no cover - macOS only
    SOL_LOCAL = 0
    LOCAL_PEERCRED = 0x001
    LOCAL_PEERPID = 0x002
    # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
    size = struct.calcsize("IIh16I")  # 76 bytes, native alignment as in <sys/ucred.h>
    raw = sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, size)
    if len(raw) < size:
        raise OSError(f"LOCAL_PEERCRED returned {len(raw)} bytes, expected {size}")
    _, uid, ngroups, *groups = struct.unpack("IIh16I", raw[:size])
    gid = groups[0] if ngroups > 0 else None
    pid: int | None = None
    with contextlib.suppress(OSError):  # LOCAL_PEERPID needs macOS 10.8+
        pid_raw = sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, struct.calcsize("i"))
        if len(pid_raw) >= struct.calcsize("i"):
            (pid,) = struct.unpack("i", pid_raw[: struct.calcsize("i")])
    return PeerCredentials(pid, uid, gid)


async def connect(
    factory: ProtocolFactory,
    address: Address,
    *,
    ssl: _ssl.SSLContext | None = None,
    timeout: float | None = 10.0,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Open a connection to ``address``, bounded by ``timeout`` seconds.

    Raises:
        TimeoutError: Not connected in time.
        OSError: Refused, not found, and the like.
    """
    loop = asyncio.get_running_loop()
    if address.kind == "tcp":
        coro: Any = loop.create_connection(
            factory,
            address.host or "127.0.0.1",
            address.port or 0,
            ssl=ssl,
            server_hostname=address.host if ssl is not None else None,
        )
    elif address.kind == "pipe":  # pragma: no cover - Windows only
        coro = _pipe_connect(factory, address)
    else:
        coro = loop.create_unix_connection(
            factory, address.path, ssl=ssl, server_hostname="localhost" if ssl is not None else None
        )
    result: tuple[asyncio.BaseTransport, asyncio.BaseProtocol] = await asyncio.wait_for(
        coro, timeout
    )
    sock = result[0].get_extra_info("socket")
    if sock is not None and address.kind == "tcp":
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keep_alive(sock)
    return result


def dial(
    address: Address, *, ssl: _ssl.SSLContext | None = None, timeout: float | None = 10.0
) -> socket.socket:
    """Open a blocking connection to ``address`` (the blocking client's), within ``timeout``.

    Raises:
        TimeoutError: Not connected in time.
        OSError: Refused, not found, and the like.
        NotImplementedError: A Windows named pipe (the blocking client speaks
            Unix sockets and TCP only).
    """
    if address.kind == "unix":
        assert address.path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
        return sock
    if address.kind == "tcp":
        host = address.host or "127.0.0.1"
        sock = socket.create_connection((host, address.port or 0), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
            if ssl is not None:
                return ssl.wrap_socket(sock, server_hostname=address.host)
        except BaseException:
            sock.close()
            raise
        return sock
    raise NotImplementedError(
        "the blocking IPCClient does not support Windows named pipes; "
        "use host=/port= or the asyncio IPCClient"
    )


# ---------------------------------------------------------------------- Windows named pipes


async def _pipe_connect(
    factory: ProtocolFactory, address: Address
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:  # pragma: no cover
    loop = asyncio.get_running_loop()
    create = getattr(loop, "create_pipe_connection", None)
    if create is None:
        raise RuntimeError("named pipes need the Proactor event loop (the default on Windows)")
    # IocpProactor.connect_pipe retries ERROR_PIPE_BUSY forever (sleeping 1 ms
    # doubling to 100 ms between tries; a missing pipe raises at once). Its only
    # await is that sleep, outside its try/except OSError, so the cancellation
    # from connect()'s wait_for ends the retry loop at the next sleep.
    result: tuple[asyncio.BaseTransport, asyncio.BaseProtocol] = await create(factory, address.path)
    return result


def _pipe_client_pid(handle: Any) -> PeerCredentials | None:  # pragma: no cover - Windows only
    """The pid at the other end of a pipe (client or server end); None when unknown."""
    if sys.platform == "win32":
        from . import _winpipe

        try:
            pid = _winpipe.peer_pid(handle.fileno() if hasattr(handle, "fileno") else int(handle))
        except (OSError, ValueError, TypeError):  # a closed PipeHandle raises ValueError
            return None
        return None if pid is None else PeerCredentials(pid, None, None)
    return None
