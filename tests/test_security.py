"""Who may connect (SPEC sections 2-3, DESIGN "Reliability principles").

File mode of the Unix socket, peer credentials of a real client process,
``authenticate`` (refusal, async, a constant-time secret check), TLS with
certificates made at test time (trustme), and no pickle anywhere in ``src``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers import wait_until, within
from ipc_server import (
    ConnectionClosedError,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCError,
    IPCServer,
)
from ipc_server.errors import HandshakeError

ROOT = Path(__file__).resolve().parent.parent
HERE = os.path.abspath(__file__)


@contextlib.asynccontextmanager
async def running(server: IPCServer) -> AsyncIterator[IPCServer]:
    """Start ``server``; close it on exit."""
    await within(server.start())
    try:
        yield server
    finally:
        await within(server.close())


def no_reconnect_task() -> bool:
    """True when no client reconnect loop is scheduled on this event loop."""
    coros = [t.get_coro() for t in asyncio.all_tasks()]
    return not any(getattr(c, "__name__", "") == "_reconnect_loop" for c in coros)


# ---------------------------------------------------------------------- the socket file


async def test_unix_socket_is_created_0600_even_with_umask_0(sock_path: str) -> None:
    """The socket file is 0o600 by default, whatever the process umask."""
    old = os.umask(0)
    try:
        async with running(IPCServer(path=sock_path)):
            mode = os.stat(sock_path).st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
        assert os.umask(0) == 0, "the server must restore the umask it narrowed"
    finally:
        os.umask(old)


async def test_socket_mode_0660_opens_it_on_purpose(sock_path: str) -> None:
    """socket_mode=0o660 gives the group access, when asked."""
    async with running(IPCServer(path=sock_path, socket_mode=0o660)):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
        client = IPCClient(path=sock_path)
        await within(client.connect())
        await within(client.close())


# ---------------------------------------------------------------------- peer credentials


async def test_peer_is_the_real_client_process(sock_path: str) -> None:
    """connection.peer has the pid, uid and gid of the client process (SO_PEERCRED)."""
    connected: list[IPCConnection] = []
    server = IPCServer(path=sock_path)
    server.on("connect", lambda conn, payload: connected.append(conn))
    async with running(server):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            HERE,
            "client",
            sock_path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            line = (await within(proc.stdout.readline())).decode().split()
            assert line[0] == "READY"
            assert int(line[1]) == proc.pid
            await wait_until(lambda: connected, "the client process to connect")
            peer = connected[0].peer
            assert peer is not None
            assert (peer.pid, peer.uid, peer.gid) == (proc.pid, os.getuid(), os.getgid())
            assert peer.pid != os.getpid()
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            assert await within(proc.wait()) == 0


async def test_tcp_connection_has_no_peer() -> None:
    """Over TCP the OS tells nothing about the peer process: peer is None."""
    connected: list[IPCConnection] = []
    server = IPCServer(host="127.0.0.1", port=0)
    server.on("connect", lambda conn, payload: connected.append(conn))
    async with running(server):
        client = IPCClient(host="127.0.0.1", port=server.port)
        await within(client.connect())
        await wait_until(lambda: connected, "the connect event")
        assert connected[0].peer is None
        await within(client.close())


# ---------------------------------------------------------------------- authenticate


async def test_authenticate_refusal_ends_with_the_reason(sock_path: str) -> None:
    """A refused client gets HandshakeError with the reason; no connect event; it does not retry."""
    calls: list[Any] = []

    def authenticate(payload: Any, conn: IPCConnection) -> bool | str:
        calls.append(payload)
        return True if payload == {"token": "right"} else "bad token"

    server = IPCServer(path=sock_path, authenticate=authenticate)
    connects: list[Any] = []
    errors: list[tuple[BaseException, Any]] = []
    server.on("connect", lambda conn, payload: connects.append(payload))
    server.on("error", lambda error, conn: errors.append((error, conn)))
    async with running(server):
        client = IPCClient(path=sock_path, reconnect=True, retries=5)
        with pytest.raises(HandshakeError) as refused:
            await within(client.connect({"token": "wrong"}))
        assert refused.value.reason == "bad token"
        assert connects == []
        assert server.connections == []
        assert client.status is IPCClientStatus.IDLE
        assert no_reconnect_task()
        assert calls == [{"token": "wrong"}]
        assert len(errors) == 1
        assert "bad token" in str(errors[0][0])
        assert isinstance(errors[0][1], IPCConnection)
        good = IPCClient(path=sock_path)
        await within(good.connect({"token": "right"}))
        assert connects == [{"token": "right"}]
        await within(good.close())


async def test_refused_on_reconnect_closes_for_good(sock_path: str) -> None:
    """A client refused while reconnecting emits close with the reason and stops trying."""
    first = IPCServer(path=sock_path)
    await within(first.start())
    client = IPCClient(path=sock_path, retries=5, max_retry_time=1.0)
    closes: list[Any] = []
    client.on("close", closes.append)
    await within(client.connect("me"))
    calls: list[Any] = []

    def refuse(payload: Any, conn: IPCConnection) -> str:
        calls.append(payload)
        return "not any more"

    await within(first.close(allow_reconnect=True))
    second = IPCServer(path=sock_path, authenticate=refuse)
    async with running(second):
        await wait_until(lambda: closes, "the client to give up")
        assert isinstance(closes[0], HandshakeError)
        assert closes[0].reason == "not any more"
        assert calls == ["me"]  # one attempt, refused, no more
        assert client.status is IPCClientStatus.IDLE
        assert no_reconnect_task()
        with pytest.raises(ConnectionClosedError):
            await within(client.request("x", timeout=1))


async def test_async_authenticate(sock_path: str) -> None:
    """authenticate may be a coroutine function; its verdict is awaited."""

    async def authenticate(payload: Any, conn: IPCConnection) -> bool | str:
        await asyncio.sleep(0)  # e.g. a lookup in a database
        return payload == "friend" or "who are you?"

    server = IPCServer(path=sock_path, authenticate=authenticate)
    server.on("request", lambda request, respond, conn: respond(conn.payload))
    async with running(server):
        friend = IPCClient(path=sock_path)
        await within(friend.connect("friend"))
        assert await within(friend.request("who am I?")) == "friend"
        stranger = IPCClient(path=sock_path)
        with pytest.raises(HandshakeError, match="who are you"):
            await within(stranger.connect("stranger"))
        await within(friend.close())


SECRET = b"correct horse battery staple"


def check_secret(payload: Any, conn: IPCConnection) -> bool | str:
    """The documented way to check a shared secret: constant time, bytes to bytes."""
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str):
        return "no token"
    return hmac.compare_digest(token.encode(), SECRET) or "bad token"


async def test_shared_secret_with_compare_digest(sock_path: str) -> None:
    """A secret compared with hmac.compare_digest admits the holder, refuses everyone else."""
    async with running(IPCServer(path=sock_path, authenticate=check_secret)):
        holder = IPCClient(path=sock_path)
        await within(holder.connect({"token": SECRET.decode()}))
        for payload, reason in [
            ({"token": "correct horse"}, "bad token"),
            ({"token": 42}, "no token"),
            ("just a string", "no token"),
            (None, "no token"),
        ]:
            with pytest.raises(HandshakeError) as refused:
                await within(IPCClient(path=sock_path).connect(payload))
            assert refused.value.reason == reason
        await within(holder.close())


async def test_authenticate_that_raises_refuses(sock_path: str) -> None:
    """An authenticate that raises refuses the client and reports the exception on error."""

    def broken(payload: Any, conn: IPCConnection) -> bool:
        raise RuntimeError("auth backend down")

    server = IPCServer(path=sock_path, authenticate=broken)
    errors: list[BaseException] = []
    server.on("error", lambda error, conn: errors.append(error))
    async with running(server):
        with pytest.raises(HandshakeError, match="authentication failed"):
            await within(IPCClient(path=sock_path).connect())
        assert any(isinstance(e, RuntimeError) for e in errors)
        assert server.connections == []


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for this test run."""
    return trustme.CA()


def server_context(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, *, with_cert: bool = False) -> ssl.SSLContext:
    """A client context trusting ``ca`` (and presenting a certificate from it, if asked)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("client@example.org").configure_cert(context)
    return context


async def test_tls_with_the_right_ca(ca: trustme.CA) -> None:
    """TLS over TCP works when the client trusts the server's CA."""
    server = IPCServer(host="127.0.0.1", port=0, ssl=server_context(ca))
    server.on("request", lambda request, respond, conn: respond({"tls": request}))
    async with running(server):
        client = IPCClient(host="127.0.0.1", port=server.port, ssl=client_context(ca))
        await within(client.connect())
        assert await within(client.request(1)) == {"tls": 1}
        await within(client.close())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_carries_big_bodies_and_bursts_of_small_ones(ca: trustme.CA, loop: str) -> None:
    """Through TLS, each loop reads into the decoder's buffers: big bodies and bursts arrive whole."""
    run = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run

    async def main() -> None:
        server = IPCServer(host="127.0.0.1", port=0, ssl=server_context(ca))
        got: list[Any] = []
        server.on("message", lambda message, conn: got.append(message))
        server.on("request", lambda request, respond, conn: respond(request))
        async with running(server):
            client = IPCClient(
                host="127.0.0.1", port=server.port, ssl=client_context(ca), codec="msgpack"
            )
            await within(client.connect())
            big = os.urandom(3 * 2**20 + 5)
            for _ in range(3):
                assert await within(client.request(big)) == big
            for i in range(2000):
                await client.send(i)
            assert await within(client.request("last")) == "last"
            assert got == list(range(2000))
            await within(client.close())

    run(main())


async def test_tls_with_the_wrong_ca_is_refused(ca: trustme.CA) -> None:
    """A client that trusts another CA refuses the server's certificate; nobody connects."""
    connects: list[Any] = []
    server = IPCServer(host="127.0.0.1", port=0, ssl=server_context(ca))
    server.on("connect", lambda conn, payload: connects.append(payload))
    async with running(server):
        client = IPCClient(host="127.0.0.1", port=server.port, ssl=client_context(trustme.CA()))
        with pytest.raises(ssl.SSLCertVerificationError):
            await within(client.connect())
        plain = IPCClient(host="127.0.0.1", port=server.port, connect_timeout=3)
        with pytest.raises((OSError, IPCError, TimeoutError)):
            await within(plain.connect("plain"))
        assert connects == []
        assert server.connections == []


async def test_mutual_tls_refuses_a_client_without_a_certificate(ca: trustme.CA) -> None:
    """With client certificates required, only a client presenting one from the CA gets in."""
    connects: list[Any] = []
    server = IPCServer(host="127.0.0.1", port=0, ssl=server_context(ca, require_client_cert=True))
    server.on("connect", lambda conn, payload: connects.append(payload))
    async with running(server):
        anonymous = IPCClient(
            host="127.0.0.1", port=server.port, ssl=client_context(ca), connect_timeout=3
        )
        with pytest.raises((OSError, IPCError, TimeoutError)):
            await within(anonymous.connect("anonymous"))
        known = IPCClient(
            host="127.0.0.1", port=server.port, ssl=client_context(ca, with_cert=True)
        )
        await within(known.connect("known"))
        assert connects == ["known"]
        await within(known.close())


# ---------------------------------------------------------------------- no pickle


def test_no_pickle_anywhere_in_src() -> None:
    """Nothing in src imports or calls pickle (or its cousins): peers never send code."""
    pattern = re.compile(r"\b(c?pickle|_pickle|dill|cloudpickle|shelve|marshal)\b")
    sources = sorted((ROOT / "src").rglob("*.py"))
    assert sources, "no sources found"
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == []


# ---------------------------------------------------------------------- the child process


async def child_client(path: str) -> None:
    """Connect, print READY and our pid, stay until stdin closes."""
    client = IPCClient(path=path, reconnect=False)
    await client.connect()
    print(f"READY {os.getpid()}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.read()
    transport.close()
    await client.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        asyncio.run(child_client(sys.argv[2]))
