"""The only module that knows sockets and pipes.

``listen`` and ``connect`` turn an ``ipc_server.address.Address``
into asyncio servers and transports for Unix sockets, TCP, TLS and Windows
named pipes. Windows code stays in the ``_pipe_*`` functions at the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl as _ssl
import stat
import struct
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from .address import Address, probe_unix_socket
from .errors import AddressInUseError

__all__ = [
    "Listener",
    "PeerCredentials",
    "connect",
    "dial",
    "listen",
    "peer_credentials",
    "release_lost",
]

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


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


class Listener:
    """A listening server: an ``asyncio.Server`` (or Windows pipe servers) and its cleanup."""

    def __init__(self, address: Address, server: Any, inode: tuple[int, int] | None) -> None:
        self.address = address
        self._server = server
        self._inode = inode

    @property
    def bound(self) -> str:
        """The address actually bound (with the real port for ``port=0``)."""
        # Not isinstance(asyncio.AbstractServer): uvloop's Server does not subclass it.
        if self.address.kind == "tcp" and not isinstance(self._server, list):
            sockets = getattr(self._server, "sockets", ())
            if sockets:
                name = sockets[0].getsockname()
                host = name[0]
                port = name[1]
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return str(self.address)

    @property
    def port(self) -> int | None:
        """The bound TCP port, else None."""
        if self.address.kind != "tcp":
            return None
        sockets = getattr(self._server, "sockets", ())
        return int(sockets[0].getsockname()[1]) if sockets else self.address.port

    def close(self) -> None:
        """Stop accepting; remove the socket file if it is still ours."""
        if isinstance(self._server, list):  # pragma: no cover - Windows pipe servers
            for pipe_server in self._server:
                pipe_server.close()
        else:
            self._server.close()
        path = self.address.path
        if self.address.kind == "unix" and path and not self.address.abstract and self._inode:
            try:
                st = os.stat(path)
            except OSError:
                return
            # Never remove a socket another server has put there since.
            if (st.st_dev, st.st_ino) == self._inode:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""
        if not isinstance(self._server, list):  # asyncio's or uvloop's Server
            await self._server.wait_closed()


async def listen(
    factory: ProtocolFactory,
    address: Address,
    *,
    ssl: _ssl.SSLContext | None = None,
    socket_mode: int | None = 0o600,
    backlog: int = 511,
) -> Listener:
    """Start listening on ``address``.

    Unix sockets: a live server at the path raises ``AddressInUseError``
    and is left alone; a stale socket file is removed; the socket is created
    with ``socket_mode`` (umask set around ``bind``, so it is never wider).

    Raises:
        AddressInUseError: A live server owns the address.
        OSError: Anything else the OS refuses.
    """
    loop = asyncio.get_running_loop()
    if address.kind == "tcp":
        try:
            server = await loop.create_server(
                factory,
                address.host,
                address.port or 0,
                ssl=ssl,
                backlog=backlog,
                reuse_address=True,
            )
        except OSError as exc:
            if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise AddressInUseError(str(address)) from exc
            raise
        return Listener(address, server, None)
    if address.kind == "pipe":  # pragma: no cover - Windows only
        return await _pipe_listen(factory, address)
    return await _unix_listen(factory, address, ssl=ssl, socket_mode=socket_mode, backlog=backlog)


async def _unix_listen(
    factory: ProtocolFactory,
    address: Address,
    *,
    ssl: _ssl.SSLContext | None,
    socket_mode: int | None,
    backlog: int,
) -> Listener:
    path = address.path
    assert path is not None
    loop = asyncio.get_running_loop()
    if not address.abstract:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise AddressInUseError(f"{path} (exists and is not a socket)")
            if await loop.run_in_executor(None, probe_unix_socket, path):
                raise AddressInUseError(path)
            # Stale: a crashed server left it behind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode: tuple[int, int] | None = None
    try:
        if address.abstract or socket_mode is None:
            _bind(sock, path)
        else:
            # The umask is process-wide; it is narrowed only for this bind so
            # the file never exists with wider permissions than asked.
            old = os.umask(0o777 & ~socket_mode)
            try:
                _bind(sock, path)
            finally:
                os.umask(old)
            os.chmod(path, socket_mode)
        if not address.abstract:
            st = os.stat(path)
            inode = (st.st_dev, st.st_ino)
        sock.listen(backlog)
        sock.setblocking(False)
        server = await loop.create_unix_server(factory, sock=sock, ssl=ssl, backlog=backlog)
    except BaseException:
        sock.close()
        if inode is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return Listener(address, server, inode)


def _bind(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno in (98, 48):  # EADDRINUSE: an abstract name or a racing server
            raise AddressInUseError(path) from exc
        raise


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


async def _pipe_listen(factory: ProtocolFactory, address: Address) -> Listener:  # pragma: no cover
    # Not loop.start_serving_pipe: it creates pipes with a NULL security
    # descriptor (read access for Everyone) that accept remote clients.
    # _winpipe serves the same way but for the current user and local clients only.
    if sys.platform == "win32":
        from . import _winpipe

        assert address.path is not None
        loop = asyncio.get_running_loop()
        try:
            servers = _winpipe.serve_pipe(loop, factory, address.path, _winpipe.create_secure_pipe)
        except OSError as exc:
            # FILE_FLAG_FIRST_PIPE_INSTANCE: the name already exists (any owner).
            busy = (_winpipe.ERROR_ACCESS_DENIED, _winpipe.ERROR_PIPE_BUSY)
            if getattr(exc, "winerror", None) in busy:
                raise AddressInUseError(address.path) from exc
            raise
        return Listener(address, servers, None)
    raise RuntimeError("named pipes exist only on Windows")


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
