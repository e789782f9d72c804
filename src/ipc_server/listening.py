"""Listening sockets: ``listen`` and the ``Listener`` it returns (re-exported by ``transport``).

The listening sockets are made here (``_ListeningSocket``) rather than by the
loop, so that running out of descriptors can neither spin the loop nor flood
the log, and so that a TLS peer over the server's bounds is closed as it is
accepted. Two ``listen`` on one Unix path are serialised by a lock on its
folder. Windows pipes are served by ``_winpipe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl as _ssl
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .address import Address, probe_unix_socket
from .errors import AddressInUseError

if sys.platform != "win32":
    import fcntl

__all__ = ["Listener", "ProtocolFactory", "listen"]

logger = logging.getLogger("ipc_server.server")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class Listener:
    """A listening server: asyncio's (or uvloop's) servers, or Windows pipe servers, and the cleanup."""

    def __init__(self, address: Address, servers: list[Any], inode: tuple[int, int] | None) -> None:
        self.address = address
        self._servers = servers
        self._inode = inode

    def _sockets(self) -> list[Any]:
        if self.address.kind != "tcp":
            return []
        return [sock for server in self._servers for sock in getattr(server, "sockets", ())]

    @property
    def bound(self) -> str:
        """The address actually bound (with the real port for ``port=0``)."""
        sockets = self._sockets()
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return str(self.address)

    @property
    def port(self) -> int | None:
        """The bound TCP port, else None."""
        if self.address.kind != "tcp":
            return None
        sockets = self._sockets()
        return int(sockets[0].getsockname()[1]) if sockets else self.address.port

    def close(self) -> None:
        """Stop accepting; remove the socket file if it is still ours."""
        for server in self._servers:
            server.close()
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
        """Wait until the listening sockets are closed."""
        if self.address.kind != "pipe":  # asyncio's or uvloop's Servers
            for server in self._servers:
                await server.wait_closed()


# ---------------------------------------------------------------------- out of descriptors

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_WARN_EVERY = 60.0  # seconds between two warnings about it


def _reserve_descriptor() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class _ListeningSocket(socket.socket):
    """A listening socket whose ``accept()`` copes with running out of descriptors.

    asyncio's selector loop meets EMFILE from ``accept()`` with a logged
    traceback and a pause of one second, but it does so for each of the up to
    ``backlog`` accepts of one wake-up, and schedules as many restarts: 2.7
    million lines of log and 41 s of CPU in a minute, measured (issue 10; see
    docs/reliability.md, Admission). Here one descriptor is held in
    reserve: when an accept fails for want of descriptors, the reserve is let
    go, the peers waiting are accepted, sent ``refusal`` (an END packet; TLS:
    nothing) and closed, and the reserve is taken again; the loop then sees an
    empty backlog and goes on. It is logged once, then at most once a minute.
    Without a reserve the error goes to the loop once (it pauses accepting for
    a second). uvloop never calls ``accept()`` here: libuv keeps a reserve of
    its own and closes such peers without a word.

    ``gate`` (TLS listeners): called as each peer is accepted; False closes
    it at once, before its TLS handshake costs anything (asyncio's TLS
    transport holds 256 KiB from the start). uvloop's peers go on to the
    protocol factory, which can only count them.
    """

    __slots__ = ("_paused_until", "_reserve", "_turned_away", "_warned_at", "gate", "refusal")

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        refusal: bytes | None = None,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        self.refusal = refusal
        self.gate = gate
        self._reserve: int | None = None
        self._turned_away = 0
        self._warned_at: float | None = None
        self._paused_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        gate = self.gate
        for _ in range(256):  # then let the loop breathe: the rest wait for its next turn
            peer, address = self._accept_peer()
            if gate is None or gate():
                return peer, address
            peer.close()  # over the server's bounds (TLS): gone before its handshake
        raise BlockingIOError(errno.EAGAIN, "peers turned away: over the server's bounds")

    def _accept_peer(self) -> tuple[socket.socket, Any]:
        if self._reserve is None:
            if self._paused_until and time.monotonic() < self._paused_until:
                raise BlockingIOError(errno.EAGAIN, "accepting paused: out of descriptors")
            self._reserve = _reserve_descriptor()
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_DESCRIPTORS:
                raise
            if self._reserve is None:
                # The loop pauses accepting for a second; the rest of this wake-up is quiet.
                self._paused_until = time.monotonic() + 0.5
                raise
            self._turn_away(exc)
            raise BlockingIOError(errno.EAGAIN, "peers turned away: out of descriptors") from None

    def _turn_away(self, exc: OSError) -> None:
        """Spend the reserve on refusing the peers that wait, then take it again."""
        reserve = self._reserve
        assert reserve is not None
        self._reserve = None
        os.close(reserve)
        count = 0
        try:
            while count < 4096:
                try:
                    peer, _ = super().accept()
                except OSError:
                    break  # none left (or the descriptor went elsewhere)
                with peer:
                    if self.refusal:
                        with contextlib.suppress(OSError):
                            peer.send(self.refusal, getattr(socket, "MSG_DONTWAIT", 0))
                count += 1
        finally:
            self._reserve = _reserve_descriptor()
        self._turned_away += count
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "ipc_server: out of file descriptors (%s) at %s: %d peers turned away so far; "
                "raise the limit (ulimit -n) or lower max_connections",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                self.getsockname() or "a socket",
                self._turned_away,
            )

    def _release_reserve(self) -> None:
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            os.close(reserve)

    def close(self) -> None:
        self._release_reserve()
        super().close()

    def detach(self) -> int:
        self._release_reserve()  # uvloop takes the descriptor over
        return super().detach()


# ---------------------------------------------------------------------- listening


async def listen(
    factory: ProtocolFactory,
    address: Address,
    *,
    ssl: _ssl.SSLContext | None = None,
    socket_mode: int | None = 0o600,
    backlog: int = 511,
    handshake_timeout: float | None = None,
    refusal: bytes | None = None,
    gate: Callable[[], bool] | None = None,
) -> Listener:
    """Start listening on ``address``.

    Unix sockets: a live server at the path raises ``AddressInUseError``
    and is left alone; a stale socket file is removed; the socket is created
    with ``socket_mode`` (umask set around ``bind``, so it is never wider).
    All of it under an exclusive lock on the socket's folder, so that of two
    ``listen`` at once on one path exactly one succeeds.

    ``handshake_timeout`` bounds the TLS handshake (None: the loop's 60 s);
    ``refusal`` is what a peer gets when it cannot be accepted for want of
    descriptors (before being closed), on loops that let this module choose;
    ``gate`` decides as each TLS peer is accepted whether it may stay
    (``_ListeningSocket``).

    Raises:
        AddressInUseError: A live server owns the address.
        OSError: Anything else the OS refuses.
    """
    if address.kind == "tcp":
        return await _tcp_listen(
            factory,
            address,
            ssl=ssl,
            backlog=backlog,
            handshake_timeout=handshake_timeout,
            refusal=refusal,
            gate=gate,
        )
    if address.kind == "pipe":  # pragma: no cover - Windows only
        return await _pipe_listen(factory, address)
    return await _unix_listen(
        factory, address, socket_mode=socket_mode, backlog=backlog, refusal=refusal
    )


async def _tcp_listen(
    factory: ProtocolFactory,
    address: Address,
    *,
    ssl: _ssl.SSLContext | None,
    backlog: int,
    handshake_timeout: float | None,
    refusal: bytes | None,
    gate: Callable[[], bool] | None,
) -> Listener:
    loop = asyncio.get_running_loop()
    tls: dict[str, Any] = {}
    if ssl is not None:
        tls = {"ssl": ssl}
        if handshake_timeout is not None:
            tls["ssl_handshake_timeout"] = handshake_timeout
    host, port = address.host, address.port or 0
    if sys.platform == "win32":  # pragma: no cover - the proactor accepts by itself
        try:
            server = await loop.create_server(factory, host, port, backlog=backlog, **tls)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, 10048):  # WSAEADDRINUSE
                raise AddressInUseError(str(address)) from exc
            raise
        return Listener(address, [server], None)
    # As asyncio's create_server binds (every address of the host, SO_REUSEADDR,
    # IPV6_V6ONLY), but into sockets of our own; port 0 gives all of them one port.
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[_ListeningSocket] = []
    servers: list[Any] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = _ListeningSocket(
                family,
                kind,
                proto,
                refusal=None if ssl else refusal,  # no END before TLS
                gate=gate if ssl else None,
            )
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(str(address)) from exc
                raise
            port = sock.getsockname()[1]
            sock.setblocking(False)
        for sock in sockets:
            servers.append(await loop.create_server(factory, sock=sock, backlog=backlog, **tls))
    except BaseException:
        for server in servers:
            server.close()
        for sock in sockets:
            sock.close()
        raise
    return Listener(address, servers, None)


@contextlib.asynccontextmanager
async def _folder_locked(path: str) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on the folder of ``path`` (no lock file is made).

    Two servers starting at once on one stale path would otherwise both find
    it stale, and the second would unlink the first's socket (issue 10). A
    folder that cannot be opened or locked is used unlocked; so is one held
    for more than 5 s (by something else than a starting server).
    """
    if sys.platform == "win32":  # pragma: no cover - pipes are exclusive by themselves
        yield
        return
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if loop.time() < deadline:
                    await asyncio.sleep(0.002)  # another start() is at it, for a few ms
                    continue
            except OSError:
                pass
            break
        yield
    finally:
        os.close(fd)  # releases the lock


async def _unix_listen(
    factory: ProtocolFactory,
    address: Address,
    *,
    socket_mode: int | None,
    backlog: int,
    refusal: bytes | None,
) -> Listener:
    path = address.path
    assert path is not None
    loop = asyncio.get_running_loop()
    sock = _ListeningSocket(socket.AF_UNIX, socket.SOCK_STREAM, refusal=refusal)
    inode: tuple[int, int] | None = None
    try:
        if address.abstract:
            _bind(sock, path)  # an abstract name is taken or not, at once
            sock.listen(backlog)
        else:
            async with _folder_locked(path):
                await _replace_stale(path)
                if socket_mode is None:
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
                st = os.stat(path)
                inode = (st.st_dev, st.st_ino)
                sock.listen(backlog)  # before the lock goes: the next probe finds it live
        sock.setblocking(False)
        server = await loop.create_unix_server(factory, sock=sock, backlog=backlog)
    except BaseException:
        sock.close()
        if inode is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return Listener(address, [server], inode)


async def _replace_stale(path: str) -> None:
    """Remove a socket file no server listens on; raise if one does, or if it is no socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUseError(f"{path} (exists and is not a socket)")
    if await asyncio.get_running_loop().run_in_executor(None, probe_unix_socket, path):
        raise AddressInUseError(path)
    # Stale: a crashed server left it behind.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bind(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno in (98, 48):  # EADDRINUSE: an abstract name or a racing server
            raise AddressInUseError(path) from exc
        raise


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
