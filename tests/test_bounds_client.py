"""The client's bounds and rules for unlucky users: pushed messages waiting for listeners,
listeners that raise CancelledError, reconnect attempts, connect timeouts (SPEC section 7)."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from typing import Any

import pytest

from helpers import POSIX_ONLY, short_socket_path, wait_until, within
from ipc_server import IPCClient, IPCClientStatus, IPCConnection, IPCServer, RemoteError, Respond
from ipc_server.clientcore import attempts, backoff
from ipc_server.sync import IPCClient as SyncIPCClient
from ipc_server.sync import IPCServer as SyncIPCServer

pytestmark = POSIX_ONLY


async def test_coroutine_listeners_waiting_hold_the_reads(path: str) -> None:
    """Coroutine listeners that do not finish: at most max_pending_events run; none is lost."""
    server = IPCServer(path=path)
    await server.start()
    client = await IPCClient(path=path, max_pending_events=100).connect()
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(message: int) -> None:
        await gate.wait()
        got.append(message)

    client.on("news", slow)
    try:
        assert await client.subscribe("news")
        for i in range(2000):
            await server.publish("news", i)
        await wait_until(lambda: len(client._tasks) >= 100, "the listeners to pile up")
        await asyncio.sleep(0.1)  # give the client the chance to read more than it may
        assert len(client._tasks) == 100
        gate.set()
        await wait_until(lambda: len(got) == 2000, "every message, once its listeners run", 20)
        assert sorted(got) == list(range(2000))
    finally:
        await client.close()
        await server.close()


async def test_a_subscription_without_maxsize_holds_the_reads_when_full(path: str) -> None:
    """subscription() without maxsize: max_pending_events queued at most, then backpressure, no loss."""
    server = IPCServer(path=path)
    await server.start()
    client = await IPCClient(path=path, max_pending_events=100).connect()
    try:
        async with client.subscription("jobs") as jobs:
            for i in range(2000):
                await server.publish("jobs", i)
            await wait_until(lambda: len(jobs._box.items) >= 100, "the queue to fill")
            await asyncio.sleep(0.1)
            assert len(jobs._box.items) == 100
            assert [await jobs.get(timeout=10) for _ in range(2000)] == list(range(2000))
    finally:
        await client.close()
        await server.close()


def test_the_blocking_listener_queue_holds_the_background_reads() -> None:
    """Blocking client: a listener that blocks keeps the queue near max_pending_events; no loss."""
    with short_socket_path() as path, SyncIPCServer(path=path) as server:
        client = SyncIPCClient(path=path, max_pending_events=100)
        gate = threading.Event()
        got: list[int] = []

        def slow(message: list[int]) -> None:
            gate.wait(30)
            got.append(message[0])

        client.on("news", slow)
        with client.connect():
            assert client.subscribe("news")
            for i in range(2000):
                server.publish("news", [i, "x" * 1000])
            deadline = time.monotonic() + 10
            while client._listeners_thread.waiting < 100:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.2)
            # One read of 64 KiB beyond the bound at most: about 64 of these messages.
            assert client._listeners_thread.waiting <= 100 + 70
            gate.set()
            deadline = time.monotonic() + 20
            while len(got) < 2000:
                assert time.monotonic() < deadline, len(got)
                time.sleep(0.01)
            assert got == list(range(2000))


async def test_a_listener_that_raises_cancelled_error_is_reported(path: str) -> None:
    """A listener raising CancelledError (a BaseException) is reported on error; the connection stays."""
    server = IPCServer(path=path)
    server_errors: list[BaseException] = []
    server.on("error", lambda error, connection: server_errors.append(error))

    def plain(request: Any, respond: Respond, connection: IPCConnection) -> None:
        raise asyncio.CancelledError("from a listener")

    server.on("request", plain)
    await server.start()
    client = await IPCClient(path=path).connect()
    errors: list[BaseException] = []
    client.on("error", errors.append)

    def message_listener(message: Any) -> None:
        raise asyncio.CancelledError("from a message listener")

    client.on("message", message_listener)
    try:
        with pytest.raises(RemoteError) as caught:
            await client.request("x")
        assert caught.value.type == "CancelledError"
        assert isinstance(server_errors[-1], asyncio.CancelledError)
        await server.broadcast("hello")
        await wait_until(lambda: errors, "the client's error event")
        assert isinstance(errors[0], asyncio.CancelledError)
        assert client.is_ready
        server.off("request")
        server.on("request", lambda request, respond, connection: respond(request))
        assert await client.request("still") == "still"
    finally:
        await client.close()
        await server.close()


def test_retries_none_retries_forever_and_the_default_outlasts_a_10_s_restart() -> None:
    """retries=None has no last attempt; the default's shortest schedule spans more than 10 s."""
    assert IPCClient(path="x", retries=None).retries is None
    numbers = attempts(None)
    assert [next(numbers) for _ in range(500)] == list(range(1, 501))
    assert list(attempts(3)) == [1, 2, 3]
    default = IPCClient(path="x")
    assert default.retries is not None
    shortest = sum(
        min(0.5 * 2.0 ** (n - 1), default.max_retry_time) / 2 for n in range(1, default.retries + 1)
    )
    assert shortest > 10.0, shortest
    assert all(backoff(n, default.max_retry_time) >= 0.25 for n in range(1, 9))


async def test_clients_come_back_after_a_restart_of_several_seconds(path: str) -> None:
    """20 clients with default options all reconnect to a server that was away for 3.5 s."""
    server = IPCServer(path=path)
    await server.start()
    clients = [await IPCClient(path=path).connect() for _ in range(20)]
    try:
        await server.close(allow_reconnect=True)
        await asyncio.sleep(3.5)  # the restart being survived, not a wait for a condition
        server = IPCServer(path=path)
        await server.start()
        await wait_until(
            lambda: all(c.status is IPCClientStatus.READY for c in clients), "every client back", 30
        )
    finally:
        for client in clients:
            client.destroy()
        await server.close()


async def test_a_timed_out_connect_leaves_nothing_behind(path: str) -> None:
    """connect() to a peer that never answers: TimeoutError, and no task or future left unretrieved."""
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: problems.append(context))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    try:
        for _ in range(3):
            client = IPCClient(path=path, connect_timeout=0.2, reconnect=False)
            with pytest.raises(TimeoutError):
                await within(client.connect())
            assert client.status is IPCClientStatus.IDLE
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0.05)
        assert problems == []
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    finally:
        loop.set_exception_handler(previous)
        listener.close()
