"""Errors that say what happened and what to do, naming the address (both clients)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from helpers import POSIX_ONLY, short_socket_path
from ipc_server import HandshakeError, IPCClient, IPCServer
from ipc_server.sync import IPCClient as SyncIPCClient

pytestmark = POSIX_ONLY


async def connect_async(path: str, **options: object) -> None:
    client = IPCClient(path=path, reconnect=False, **options)  # type: ignore[arg-type]
    await client.connect()


def connect_blocking(path: str, **options: object) -> None:
    client = SyncIPCClient(path=path, reconnect=False, **options)  # type: ignore[arg-type]
    client.connect()


def connect(front: str, path: str, **options: object) -> None:
    """connect() with the asyncio or the blocking client."""
    if front == "asyncio":
        asyncio.run(connect_async(path, **options))
    else:
        connect_blocking(path, **options)


@pytest.mark.parametrize("front", ["asyncio", "blocking"])
def test_no_server_names_the_path(front: str) -> None:
    """A path with no socket: FileNotFoundError naming the path and the likely cause."""
    with short_socket_path() as path:
        with pytest.raises(FileNotFoundError) as caught:
            connect(front, path)
        assert path in str(caught.value)
        assert "is the server running" in str(caught.value)


@pytest.mark.parametrize("front", ["asyncio", "blocking"])
def test_a_stale_socket_names_the_path(front: str) -> None:
    """A socket file nobody listens on: ConnectionRefusedError saying so."""
    with short_socket_path() as path:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        with pytest.raises(ConnectionRefusedError) as caught:
            connect(front, path)
        assert path in str(caught.value)
        assert "stale socket file" in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root on Linux")
@pytest.mark.parametrize("front", ["asyncio", "blocking"])
def test_a_folder_without_permission_names_the_path(front: str) -> None:
    """A socket in a folder this user may not enter: PermissionError naming the path."""
    import subprocess

    with short_socket_path() as path:
        folder = os.path.dirname(path)
        os.chmod(folder, 0o700)  # root's; nobody may not enter
        call = (
            f"asyncio.run(IPCClient(path={path!r}).connect())"
            if front == "asyncio"
            else f"S(path={path!r}).connect()"
        )
        code = (
            "import asyncio, importlib.util, os, sys;"
            "importlib.util.find_spec('ipc_server') or sys.path.insert(0, 'src');"
            "from ipc_server import IPCClient; from ipc_server.sync import IPCClient as S\n"
            "os.setuid(65534)\n"
            "try:\n"
            f"    {call}\n"
            "except PermissionError as e: print('PE', e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.startswith("PE"), out.stdout + out.stderr
        assert path in out.stdout
        assert "permission denied" in out.stdout


@pytest.mark.parametrize("front", ["asyncio", "blocking"])
def test_something_that_is_not_an_ipc_server(front: str) -> None:
    """A socket that answers something else: HandshakeError naming the address (or a timeout)."""
    with short_socket_path() as path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)

        import threading

        def serve() -> None:
            conn, _ = listener.accept()
            conn.recv(100)
            conn.sendall(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff not us")
            conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with pytest.raises((HandshakeError, ConnectionError)) as caught:
                connect(front, path, connect_timeout=5)
            assert path in str(caught.value) or isinstance(caught.value, ConnectionError)
        finally:
            thread.join(10)
            listener.close()


async def test_the_blocking_client_on_the_loop_that_serves_it_raises_at_once(path: str) -> None:
    """A blocking call on the thread of the loop that runs the server: RuntimeError at once."""
    server = IPCServer(path=path)
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RuntimeError) as caught:
            SyncIPCClient(path=path, connect_timeout=5).connect()
        assert loop.time() - started < 1.0
        assert "deadlock" in str(caught.value)
        assert path in str(caught.value)
    finally:
        await server.close()
