"""Admission and who may connect (SPEC 7, issue 10): how many peers, and which.

``max_handshaking``, ``max_connections`` derived from the descriptor limit,
running out of descriptors, the TLS handshake under ``handshake_timeout``,
``SO_KEEPALIVE``, ``allowed_uids`` and one ``start()`` per path. A server
that must run out of something runs in its own process
(``boundkit.BoundServer``, its descriptor limit lowered); the uid rules use
a child that switches to ``nobody`` (``as_nobody.py``): root on Linux only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import trustme

from boundkit import BoundServer, Bystander, raw_peer
from helpers import eventually, within
from ipc_server import AddressInUseError, IPCClient, IPCConnection, IPCServer
from ipc_server.errors import HandshakeError
from ipc_server.sync import IPCClient as SyncIPCClient

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux: /proc, rlimits, uids")

AS_NOBODY = Path(__file__).with_name("as_nobody.py")
NOBODY = 65534
needs_root = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="a second uid: needs root (a child switches to nobody)",
)


def descriptor_limit(n: int) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child ``n`` descriptors."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def log_file(folder: Path) -> IO[str]:
    """A file for a server's stderr, to count its lines."""
    return open(folder / "stderr", "w+")


def silent_peers(path: str, count: int) -> list[socket.socket]:
    """``count`` sockets connected to ``path`` that never send a byte."""
    peers = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        peers.append(sock)
    return peers


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll the coroutine function ``check`` until it answers True; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def refused(path: str, timeout: float = 5.0) -> tuple[BaseException, float]:
    """Connect a fresh client that must be turned away: its error and how long it took."""
    started = time.perf_counter()
    client = IPCClient(path=path, reconnect=False)
    with pytest.raises((HandshakeError, ConnectionError, OSError)) as info:
        await client.connect(timeout=timeout)
    return info.value, time.perf_counter() - started


# ---------------------------------------------------------------------- max_handshaking


async def test_max_handshaking_turns_the_next_peer_away_at_once() -> None:
    """Past max_handshaking (256) peers not yet admitted, a newcomer gets END "server busy" at once; admitted clients go on."""
    with BoundServer({"handshake_timeout": 60}) as server:
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(silent_peers, server.path, 256)
            try:

                async def all_counted() -> bool:
                    return bool((await server.astats())["handshaking"] == 256)

                await until(all_counted, "256 peers in the handshake")
                error, seconds = await refused(server.path)
                assert isinstance(error, HandshakeError)
                assert error.reason == "server busy"
                assert seconds < 1.0
                stats = await server.astats()
                assert stats["handshaking"] == 256
                assert any("max_handshaking=256" in e for e in stats["errors"]), stats["errors"]
                assert stats["rss_mib"] < 100, stats
                assert stats["tasks"] < 10, stats
                assert await bystander.check() < 1.0
                assert bystander.worst < 1.0
                assert not bystander.failures
            finally:
                close_all(peers)

            async def none_left() -> bool:
                return bool((await server.astats())["handshaking"] == 0)

            await until(none_left, "the peers forgotten once gone")
            client = await within(IPCClient(path=server.path).connect())
            await within(client.close())


# ---------------------------------------------------------------------- descriptors


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_max_connections_follows_the_descriptor_limit(loop: str, tmp_path: Path) -> None:
    """With 256 descriptors the server admits 192 clients, then says "server full" within 1 s, idle and quiet."""
    full = 256 - 64  # the default: limit - max(64, limit // 10)
    with (
        log_file(tmp_path) as err,
        BoundServer(
            {"handshake_timeout": 60}, loop=loop, preexec=descriptor_limit(256), stderr=err
        ) as server,
    ):
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(
                lambda: [raw_peer(server.path, i) for i in range(full - 1)]
            )
            try:
                assert (await server.astats())["connections"] == full
                cpu = cpu_seconds(server.pid)
                error, seconds = await refused(server.path)
                assert isinstance(error, HandshakeError), error
                assert error.reason == f"server full: max_connections={full}"
                assert seconds < 1.0
                await asyncio.sleep(2.0)  # a window to measure the CPU in (nothing to wait for)
                assert cpu_seconds(server.pid) - cpu < 0.3
                stats = await server.astats()
                assert any(f"max_connections={full}" in e for e in stats["errors"])
                assert stats["rss_mib"] < 100, stats
                assert stats["tasks"] < 10, stats
                assert bystander.worst < 1.0
                assert not bystander.failures
                err.seek(0)
                assert len(err.readlines()) < 5
            finally:
                close_all(peers)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_out_of_descriptors_neither_spins_nor_floods_the_log(
    loop: str, tmp_path: Path
) -> None:
    """With no descriptor left (max_connections=None), accepting neither spins nor floods the log, and a newcomer is turned away within 1 s."""
    limit = 128
    with (
        log_file(tmp_path) as err,
        BoundServer(
            {"max_connections": None, "handshake_timeout": 60},
            loop=loop,
            preexec=descriptor_limit(limit),
            stderr=err,
        ) as server,
    ):
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(silent_peers, server.path, limit + 32)
            try:
                await eventually(
                    lambda: len(os.listdir(f"/proc/{server.pid}/fd")) >= limit - 1,
                    what="the server out of descriptors",
                )
                cpu = cpu_seconds(server.pid)
                error, seconds = await refused(server.path)
                assert seconds < 1.0
                # Closed at once, with END "server full: out of file descriptors" on
                # asyncio (read unless the peer wrote after the close: then a reset);
                # uvloop (libuv) closes such peers without a word.
                if isinstance(error, HandshakeError):
                    assert error.reason == "server full: out of file descriptors"
                else:
                    assert isinstance(error, ConnectionError), error
                await asyncio.sleep(2.0)  # a window to measure the CPU in (nothing to wait for)
                assert cpu_seconds(server.pid) - cpu < 0.3
                assert rss_mib(server.pid) < 100
                assert await bystander.check() < 1.0
                assert bystander.worst < 1.0
                assert not bystander.failures
                err.seek(0)
                lines = err.readlines()
                assert len(lines) < 5, lines[:20]
            finally:
                close_all(peers)


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for this module."""
    return trustme.CA()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_peers_count_from_accept_and_are_forgotten(ca: trustme.CA, loop: str) -> None:
    """Silent TCP peers of a TLS server count towards max_handshaking from accept, a newcomer beyond it is refused; at handshake_timeout they are dropped and forgotten, as is a failed TLS handshake."""
    run = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)

    def gone(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def main() -> None:
        server = IPCServer(
            host="127.0.0.1", port=0, ssl=server_ssl, handshake_timeout=0.5, max_handshaking=3
        )
        errors: list[str] = []
        server.on("error", lambda error, conn: errors.append(str(error)))
        await within(server.start())
        try:
            port = server.port
            assert port is not None

            def client(**options: Any) -> IPCClient:
                return IPCClient(host="127.0.0.1", port=port, ssl=client_ssl, **options)

            bystander = await within(client().connect())
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            await eventually(lambda: len(server._handshaking) == 3, what="3 peers counted")
            with pytest.raises((HandshakeError, ConnectionError)) as info:
                await within(client(reconnect=False).connect())
            if loop == "asyncio":  # closed as accepted, before its TLS handshake costs anything
                assert isinstance(info.value, ConnectionError)
            else:  # uvloop calls no accept() of ours: END after the TLS handshake
                assert isinstance(info.value, HandshakeError)
                assert info.value.reason == "server busy"
            assert any("max_handshaking=3" in e for e in errors), errors
            assert await within(bystander.ping()) < 1.0
            await eventually(lambda: not server._handshaking, 3.0, "the silent peers forgotten")
            await eventually(lambda: all(gone(s) for s in silent), 3.0, "the silent peers dropped")
            assert sum("no TLS handshake within handshake_timeout=0.5" in e for e in errors) == 3
            garbage = socket.create_connection(("127.0.0.1", port))
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")  # a TLS handshake that fails
            await eventually(lambda: gone(garbage), 3.0, "the failed handshake dropped")
            await eventually(lambda: not server._handshaking, 3.0, "the failed peer forgotten")
            late = await within(client().connect())
            assert len(server.connections) == 2
            for sock in [*silent, garbage]:
                sock.close()
            await within(late.close())
            await within(bystander.close())
        finally:
            await within(server.close())

    run(main())


# ---------------------------------------------------------------------- SO_KEEPALIVE


async def test_tcp_connections_get_keepalive() -> None:
    """Accepted TCP sockets and the sockets of both clients have SO_KEEPALIVE on."""
    conns: list[IPCConnection] = []
    server = IPCServer(host="127.0.0.1", port=0)
    server.on("connect", lambda conn, payload: conns.append(conn))
    await within(server.start())
    try:
        aio = await within(IPCClient(host="127.0.0.1", port=server.port).connect())
        blocking = await asyncio.to_thread(
            lambda: SyncIPCClient(host="127.0.0.1", port=server.port).connect()
        )
        await eventually(lambda: len(conns) == 2, what="both clients admitted")

        def keepalive(sock: Any) -> int:
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

        transports = [c._current_transport() for c in conns]
        transports.append(aio._proto._current_transport() if aio._proto is not None else None)
        assert [keepalive(t.get_extra_info("socket")) for t in transports if t] == [1, 1, 1]
        assert blocking._conn is not None
        assert keepalive(blocking._conn.sock) == 1
        await asyncio.to_thread(blocking.close)
        await within(aio.close())
    finally:
        await within(server.close())


# ---------------------------------------------------------------------- who may connect


@contextlib.contextmanager
def open_folder() -> Iterator[str]:
    """A fresh folder under /tmp that nobody may traverse (0o755)."""
    folder = tempfile.mkdtemp(prefix="ipcu", dir="/tmp")
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def as_nobody(path: str) -> dict[str, Any]:
    """Connect to ``path`` from a child running as nobody; what it got (``as_nobody.py``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(AS_NOBODY), "client", path, "{}", stdout=subprocess.PIPE
    )
    out, _ = await within(proc.communicate(), 20)
    result: dict[str, Any] = json.loads(out)
    return result


@contextlib.asynccontextmanager
async def uid_server(**options: Any) -> AsyncIterator[tuple[IPCServer, list[str]]]:
    """A started server that answers ``"who"`` with the peer's uid, and its error events."""
    server = IPCServer(**options)
    errors: list[str] = []
    server.on("error", lambda error, conn: errors.append(str(error)))
    server.on("request", lambda request, respond, conn: respond(conn.peer and conn.peer.uid))
    await within(server.start())
    try:
        yield server, errors
    finally:
        await within(server.close())


@needs_root
async def test_abstract_socket_admits_only_its_own_uid_and_root() -> None:
    """On an abstract socket a peer of another uid gets END "uid N is not allowed"; the error names allowed_uids."""
    path = f"@ipc-test-{uuid.uuid4().hex[:12]}"
    async with uid_server(path=path) as (server, errors):
        own = await within(IPCClient(path=path).connect())
        assert await within(own.request("who")) == 0
        assert await as_nobody(path) == {
            "error": "HandshakeError",
            "reason": f"uid {NOBODY} is not allowed",
        }
        assert any(f"uid {NOBODY} is not allowed" in e and "allowed_uids" in e for e in errors), (
            errors
        )
        assert len(server.connections) == 1
        assert not server._handshaking
        assert await within(own.ping()) < 1.0
        await within(own.close())


@needs_root
async def test_allowed_uids_applies_to_a_socket_file_too() -> None:
    """allowed_uids=[nobody] admits nobody through a 0o666 socket file and refuses root, naming its uid."""
    with open_folder() as folder:
        path = os.path.join(folder, "s.sock")
        async with uid_server(path=path, allowed_uids=[NOBODY], socket_mode=0o666) as (_, errors):
            assert await as_nobody(path) == {"ok": NOBODY}
            with pytest.raises(HandshakeError) as info:
                await within(IPCClient(path=path, reconnect=False).connect())
            assert info.value.reason == "uid 0 is not allowed"
            assert any("allowed_uids: 65534" in e for e in errors), errors


def test_allowed_uids_is_checked() -> None:
    """allowed_uids must be uids (ints >= 0), and is refused for TCP, where a peer has no uid."""
    with pytest.raises(ValueError, match="allowed_uids"):
        IPCServer(host="127.0.0.1", port=0, allowed_uids=[0])
    with pytest.raises(TypeError, match="allowed_uids"):
        IPCServer(path="x", allowed_uids=["root"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="allowed_uids"):
        IPCServer(path="x", allowed_uids=[-1])
    assert IPCServer(path="x", allowed_uids=iter([3, 3, 4])).allowed_uids == frozenset({3, 4})


# ---------------------------------------------------------------------- one start() per path


def start_racing(
    path: str,
    name: str,
    barrier: threading.Barrier,
    outcomes: dict[str, str],
    stop: threading.Event,
) -> None:
    """On a loop of this thread: start a server at ``path`` with the other racer; record how it went."""

    async def main() -> None:
        server = IPCServer(path=path)
        server.on("request", lambda request, respond, conn: respond(name))
        barrier.wait(5)
        try:
            await server.start()
        except AddressInUseError:
            outcomes[name] = "in use"
            return
        outcomes[name] = "listening"
        await asyncio.to_thread(stop.wait, 10)
        await server.close()

    asyncio.run(main())


def test_two_starts_on_a_stale_path_give_exactly_one_server() -> None:
    """Two start() at once (threads with loops of their own) on a stale socket: one listens, the other raises AddressInUseError, every time."""
    with open_folder() as folder:
        path = os.path.join(folder, "s.sock")
        for _ in range(30):
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(path)
            stale.close()  # the file stays: a crashed server's
            barrier = threading.Barrier(2)
            outcomes: dict[str, str] = {}
            stop = threading.Event()
            threads = [
                threading.Thread(target=start_racing, args=(path, n, barrier, outcomes, stop))
                for n in ("a", "b")
            ]
            for thread in threads:
                thread.start()
            try:
                deadline = time.monotonic() + 10
                while len(outcomes) < 2 and time.monotonic() < deadline:
                    time.sleep(0.002)
                assert sorted(outcomes.values()) == ["in use", "listening"], outcomes
                winner = next(n for n, o in outcomes.items() if o == "listening")
                with SyncIPCClient(path=path, connect_timeout=5) as client:
                    assert client.request("who") == winner
            finally:
                stop.set()
                for thread in threads:
                    thread.join(10)
            assert not os.path.exists(path)
