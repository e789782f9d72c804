"""Cancellation and deadlines that reach the handler, from both clients (docs/protocol.md, section 13).

A caller that gives up (its timeout passes, its task is cancelled) tells a
peer of this library, and the handler's task is cancelled: the server's for
``request()``, the worker's for ``call()``, the asyncio client's for a
server → client request. The blocking client cannot stop a plain function
that runs: its ``respond`` is marked ``cancelled`` and the answer dropped.
The caller's timeout travels along as ``respond.deadline``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ipc_server import IPCConnection, RequestTimeoutError
from ipc_server.options import DEFAULT_TIMEOUT

from .adapters import AsyncioClient, Front
from .peer import Peer
from .polling import DEADLINE, Recorder, wait_until


class Sleeper:
    """A handler that waits (far longer than any test) and records being cancelled."""

    def __init__(self) -> None:
        self.started: Recorder[Any] = Recorder()
        self.cancelled: Recorder[Any] = Recorder()

    async def __call__(self, request: Any, respond: Any, *rest: Any) -> None:
        self.started(request)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled(request)
            raise
        await respond("woke up")  # pragma: no cover - never reached in a passing test


@pytest.fixture
def aio_worker(front: Front, server: Peer) -> Iterator[AsyncioClient]:
    """An asyncio client for the worker's side (the front's own, if it is asyncio)."""
    if front.name == "asyncio":
        client = front.connected()
        assert isinstance(client, AsyncioClient)
        yield client
        return
    other = Front("asyncio", server.path)
    try:
        client = other.connected()
        assert isinstance(client, AsyncioClient)
        yield client
    finally:
        other.destroy_all()
        other.close()


def test_a_timed_out_request_cancels_the_server_handler(front: Front, server: Peer) -> None:
    """request() whose timeout passes: the server's handler task is cancelled."""
    sleeper = Sleeper()
    server.commands["sleep"] = sleeper
    client = front.connected()
    with pytest.raises(RequestTimeoutError):
        client.request({"cmd": "sleep", "n": 1}, timeout=0.3)
    assert sleeper.cancelled.wait_for(1, "the handler's cancellation") == [{"cmd": "sleep", "n": 1}]
    assert client.request("after") == "after"


@pytest.mark.parametrize("front", ["asyncio"], indirect=True)
def test_a_cancelled_request_task_cancels_the_server_handler(front: Front, server: Peer) -> None:
    """The asyncio client's request task cancelled: the server's handler task is cancelled."""
    sleeper = Sleeper()
    server.commands["sleep"] = sleeper
    client = front.connected()
    assert isinstance(client, AsyncioClient)

    async def ask() -> Any:
        return await client.aio.request({"cmd": "sleep"}, 30)

    task = asyncio.run_coroutine_threadsafe(ask(), client.loop.loop)
    sleeper.started.wait_for(1, "the handler starts")
    task.cancel()
    sleeper.cancelled.wait_for(1, "the handler's cancellation")
    assert client.request("after") == "after"


def test_a_timed_out_call_cancels_the_worker_handler(
    front: Front, server: Peer, aio_worker: AsyncioClient
) -> None:
    """call() whose timeout passes: the server is told, and tells the worker, whose handler
    task is cancelled."""
    sleeper = Sleeper()
    assert aio_worker.serve("slow", sleeper) is True
    caller = front.connected()
    with pytest.raises(RequestTimeoutError):
        caller.call("slow", "job", timeout=0.3)
    assert sleeper.cancelled.wait_for(1, "the worker handler's cancellation") == ["job"]
    wait_until(lambda: server.pending(aio_worker.id) == 0, "the worker has no call in flight")


@pytest.mark.parametrize("front", ["asyncio"], indirect=True)
def test_a_server_request_that_times_out_cancels_the_client_handler(
    front: Front, server: Peer
) -> None:
    """A server → client request whose timeout passes: the asyncio client's handler task
    is cancelled."""
    sleeper = Sleeper()
    client = front.connected()
    client.on("request", sleeper)
    with pytest.raises(RequestTimeoutError):
        server.request_client("job", timeout=0.3)
    assert sleeper.cancelled.wait_for(1, "the client handler's cancellation") == ["job"]
    assert client.request("after") == "after"


@pytest.mark.parametrize("front", ["blocking"], indirect=True)
def test_the_blocking_client_drops_answers_the_server_gave_up_on(
    front: Front, server: Peer
) -> None:
    """The blocking client cannot stop a plain function: a server → client request the server
    gave up on runs on, respond.cancelled tells it, its answer is dropped without an error,
    and a request given up on before its listener started never runs."""
    gate = threading.Event()
    seen: Recorder[Any] = Recorder()
    after: Recorder[tuple[Any, bool]] = Recorder()
    errors: Recorder[Any] = Recorder()

    responds: list[Any] = []

    def listener(request: Any, respond: Any) -> None:
        seen(request)
        responds.append(respond)
        if request != "third":
            gate.wait(DEADLINE)
        after((request, respond.cancelled))
        respond(request)  # dropped when cancelled: no RuntimeError

    client = front.connected()
    client.on("error", errors)
    client.on("request", listener)
    try:
        with pytest.raises(RequestTimeoutError):
            server.request_client("first", timeout=0.3)
        with pytest.raises(RequestTimeoutError):
            server.request_client("second", timeout=0.3)  # queued behind "first"
        # The server sent both cancel notices before this answer: once it is read, the
        # client's reader (not the busy listener thread) has taken them.
        assert client.request("in order") == "in order"
        assert responds[0].cancelled
    finally:
        gate.set()
    assert after.wait_for(1, "the first listener ends") == [("first", True)]
    assert server.request_client("third", timeout=5.0) == "third"
    assert seen.items == ["first", "third"]  # "second" never ran
    assert errors.items == []
    assert client.request("after") == "after"


@pytest.mark.parametrize("front", ["blocking"], indirect=True)
def test_a_blocking_worker_drops_a_call_its_caller_gave_up_on(front: Front, server: Peer) -> None:
    """A call whose caller timed out reaches a blocking worker's respond as cancelled; its
    late answer is dropped, and the worker serves the next call."""
    gate = threading.Event()
    done: Recorder[bool] = Recorder()

    responds: list[Any] = []

    def handler(request: Any, respond: Any) -> None:
        responds.append(respond)
        if request == "slow":
            gate.wait(DEADLINE)
        done(respond.cancelled)
        respond(request)

    worker, caller = front.connected(), front.connected()
    worker.serve("job", handler)
    try:
        with pytest.raises(RequestTimeoutError):
            caller.call("job", "slow", timeout=0.3)
        wait_until(lambda: server.pending(worker.id) == 0, "the server forgets the call")
        assert worker.request("in order") == "in order"  # read after the cancel notice
        assert responds[0].cancelled
    finally:
        gate.set()
    assert done.wait_for(1, "the slow handler ends") == [True]
    assert caller.call("job", "fast", timeout=5.0) == "fast"
    assert done.items == [True, False]


def deadline_left(request: Any, respond: Any, connection: IPCConnection) -> None:
    """The server's ``deadline`` command: the seconds left to ``respond.deadline`` (or None)."""
    deadline = respond.deadline
    respond(None if deadline is None else deadline - asyncio.get_running_loop().time())


def test_the_caller_timeout_is_the_handler_deadline(front: Front, server: Peer) -> None:
    """respond.deadline is the loop time at which the caller gives up: the request's timeout
    from when it was read; None without a timeout and for streams."""
    server.commands["deadline"] = deadline_left
    server.commands["stream_deadline"] = lambda r, respond, c: respond.stream([respond.deadline])
    client = front.connected()
    left = client.request({"cmd": "deadline"}, timeout=2.0)
    assert 1.5 < left <= 2.0
    assert client.request({"cmd": "deadline"}, timeout=None) is None
    assert list(client.stream({"cmd": "stream_deadline"}, timeout=2.0)) == [None]


def test_the_usual_timeout_is_the_deadline_without_travelling(front: Front, server: Peer) -> None:
    """A request with the requester's usual timeout carries no "dl" (the CONNECTION exchange
    said how long such requests wait) and its handler has the deadline all the same, both
    ways; one that waits forever still has none."""

    def handler(request: Any, respond: Any) -> None:
        deadline = respond.deadline
        respond(None if deadline is None else deadline - time.monotonic())

    server.commands["deadline"] = deadline_left
    client = front.connected()
    left = client.request({"cmd": "deadline"})  # the client's request_timeout: 10 s
    assert 9.0 < left <= 10.0
    client.on("request", handler)
    left = server.request_client("x", timeout=DEFAULT_TIMEOUT)  # the server's usual one
    assert 9.0 < left <= 10.0
    assert server.request_client("x", timeout=None) is None


def test_the_caller_timeout_reaches_the_worker(front: Front, server: Peer) -> None:
    """A call's timeout travels through the server: the worker's respond.deadline is when
    the caller gives up (on time.monotonic()'s clock, the loop clock of the asyncio client)."""

    def handler(request: Any, respond: Any) -> None:
        deadline = respond.deadline
        respond(None if deadline is None else deadline - time.monotonic())

    worker, caller = front.connected(), front.connected()
    worker.serve("dl", handler)
    left = caller.call("dl", timeout=3.0)
    assert 2.0 < left <= 3.0
    assert caller.call("dl", timeout=None) is None
