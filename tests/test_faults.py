"""Dead and misbehaving peers (DESIGN "Reliability principles").

Servers and clients are killed with SIGKILL in real subprocesses (this module
run as a script plays their parts, see ``main``): pending work must fail at
once with ConnectionClosedError rather than wait for its timeout, a killed
client must be forgotten, and reconnecting clients must back off with jitter,
give up after ``retries``, and restore their subscriptions by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from helpers import wait_until, within
from ipc_server import (
    ConnectionClosedError,
    ConnectionDestroyedError,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCServer,
    RequestTimeoutError,
)

DEADLINE = 10.0
HERE = os.path.abspath(__file__)
SLOW = os.environ.get("IPC_SLOW") == "1"
"""Set IPC_SLOW=1 to run the full-size versions (1,000,000 sends)."""


class Child:
    """This module run as a script in a subprocess, playing one part (see ``main``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    @classmethod
    async def start(cls, *args: str) -> Child:
        """Start ``python tests/test_faults.py *args``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            HERE,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, prefix: str, timeout: float = DEADLINE) -> str:
        """The next stdout line starting with ``prefix`` (fails at EOF or after ``timeout``)."""
        assert self.proc.stdout is not None
        while True:
            line = (await within(self.proc.stdout.readline(), timeout)).decode()
            assert line, f"child {self.pid} ended before printing {prefix!r}"
            if line.startswith(prefix):
                return line.strip()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child, if it still runs."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def finish(self, timeout: float = DEADLINE) -> int:
        """Close its stdin (the stop signal), wait for it; SIGKILL if it does not stop."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            return await within(self.proc.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.signal(signal.SIGKILL)
            return await within(self.proc.wait())


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    """Start children with the yielded function; all are stopped (or killed) on exit."""
    started: list[Child] = []

    async def spawn(*args: str) -> Child:
        child = await Child.start(*args)
        started.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in started:
            child.signal(signal.SIGCONT)
            await child.finish(timeout=5)


def statuses(client: IPCClient) -> list[tuple[float, IPCClientStatus]]:
    """Record ``client``'s status changes with loop timestamps."""
    log: list[tuple[float, IPCClientStatus]] = []
    loop = asyncio.get_running_loop()
    client.on("status", lambda status: log.append((loop.time(), status)))
    return log


# ---------------------------------------------------------------------- a killed server


async def test_killed_server_fails_pending_at_once_then_reconnect_restores_subscriptions(
    sock_path: str,
) -> None:
    """SIGKILL the server under 1,000 requests: all fail at once; after a restart the topic works unasked."""
    async with children() as spawn:
        server = await spawn("server", sock_path, "1000")
        await server.expect("READY")
        client = IPCClient(path=sock_path, retries=8, max_retry_time=1.0)
        await within(client.connect("survivor"))
        news: list[Any] = []
        client.on("news", news.append)
        assert await within(client.subscribe("news"))
        first_id = client.id
        futures = [
            asyncio.ensure_future(client.request({"hold": i}, timeout=60)) for i in range(1000)
        ]
        await server.expect("HELD 1000")  # all 1,000 reached the server and wait there
        loop = asyncio.get_running_loop()
        killed = loop.time()
        server.signal(signal.SIGKILL)
        results = await within(asyncio.gather(*futures, return_exceptions=True))
        elapsed = loop.time() - killed
        assert all(isinstance(r, ConnectionClosedError) for r in results), results[:3]
        assert elapsed < 2.0, f"pending requests took {elapsed:.2f} s to fail (timeout 60 s)"

        restarted = await spawn("server", sock_path, "0")
        await restarted.expect("READY")
        await wait_until(lambda: client.status is IPCClientStatus.READY, "the reconnect", 15)
        assert client.id == first_id
        assert client.topics == ["news"]
        # No subscribe() call: the reconnect restored the subscription.
        assert await within(client.publish("news", "after restart"))
        await wait_until(lambda: news == ["after restart"], "the published message")
        await within(client.close())


# ---------------------------------------------------------------------- a killed client


async def test_killed_client_is_forgotten_and_its_slots_fail_fast(sock_path: str) -> None:
    """SIGKILL a client: disconnect fires, its topics go, survey and ping slots fail without waiting."""
    server = IPCServer(path=sock_path)
    gone: list[tuple[IPCConnection, Any]] = []
    server.on("disconnect", lambda conn, reason: gone.append((conn, reason)))
    await within(server.start())
    healthy = IPCClient(path=sock_path, reconnect=False)
    healthy.on("request", lambda request, respond: respond("ok"))
    try:
        await within(healthy.connect("healthy"))
        assert await within(healthy.subscribe("alpha"))
        async with children() as spawn:
            victim = await spawn("client", sock_path, "victim", "alpha", "beta")
            await victim.expect("READY")
            await wait_until(
                lambda: "beta" in server.topics and len(server.topics["alpha"]) == 2,
                "the victim's subscriptions",
            )
            vconn = next(c for c in server.connections if c.payload == "victim")
            survey = asyncio.ensure_future(server.survey("hang", timeout=30))
            await victim.expect("GOT hang")  # the victim holds the survey request unanswered
            loop = asyncio.get_running_loop()
            killed = loop.time()
            victim.signal(signal.SIGKILL)
            slots = {conn.payload: result for conn, result in await within(survey)}
            assert loop.time() - killed < 2.0
            assert slots["healthy"] == "ok"
            assert isinstance(slots["victim"], ConnectionClosedError)
            await wait_until(lambda: any(c is vconn for c, _ in gone), "the disconnect event")
            assert vconn not in server.connections
            assert {t: [c.payload for c in subs] for t, subs in server.topics.items()} == {
                "alpha": ["healthy"]
            }

            stopped = await spawn("client", sock_path, "stopped", "gamma")
            await stopped.expect("READY")
            await wait_until(lambda: "gamma" in server.topics, "the second victim's subscription")
            stopped.signal(signal.SIGSTOP)  # alive but silent: it cannot answer a PING
            sconn = next(c for c in server.connections if c.payload == "stopped")
            ping = asyncio.ensure_future(server.ping("x", timeout=30))
            # The PING is written and waits for its PONG (the response table is private).
            await wait_until(lambda: sconn._pending, "the PING to be in flight")
            killed = loop.time()
            stopped.signal(signal.SIGKILL)
            slots = {conn.payload: result for conn, result in await within(ping)}
            assert loop.time() - killed < 2.0
            assert isinstance(slots["healthy"], float)
            assert isinstance(slots["stopped"], ConnectionClosedError)
            await wait_until(lambda: "gamma" not in server.topics, "the topic to be forgotten")
    finally:
        await within(healthy.close())
        await within(server.close())


# ---------------------------------------------------------------------- graceful close and destroy


async def graceful_close_after_sends(sock_path: str, count: int, timeout: float) -> None:
    """A client process sends ``count`` messages then close(); the server must get every one."""
    server = IPCServer(path=sock_path)
    state = {"next": 0, "out_of_order": 0}
    done: list[Any] = []

    def on_message(message: Any, conn: IPCConnection) -> None:
        if message != state["next"]:
            state["out_of_order"] += 1
        state["next"] = message + 1

    server.on("message", on_message)
    server.on("disconnect", lambda conn, reason: done.append(reason))
    await within(server.start())
    try:
        async with children() as spawn:
            sender = await spawn("sender", sock_path, str(count))
            line = await sender.expect("DONE", timeout=timeout)
            assert line == f"DONE {count}"
            assert await sender.finish() == 0
            await wait_until(lambda: done, "the sender's disconnect")
        assert state == {"next": count, "out_of_order": 0}
        assert done == ["sent everything"]
    finally:
        await within(server.close())


async def test_graceful_close_right_after_many_sends_delivers_all(sock_path: str) -> None:
    """close() right after 100,000 sends: the server received every one, in order."""
    await graceful_close_after_sends(sock_path, 100_000, timeout=40)


@pytest.mark.skipif(not SLOW, reason="the full-size run: set IPC_SLOW=1")
@pytest.mark.timeout(600)
async def test_graceful_close_right_after_a_million_sends_delivers_all(sock_path: str) -> None:
    """close() right after 1,000,000 sends: the server received every one, in order."""
    await graceful_close_after_sends(sock_path, 1_000_000, timeout=500)


async def test_destroy_fails_pending_requests_at_once(sock_path: str) -> None:
    """destroy(): every pending request fails at once with ConnectionDestroyedError."""
    server = IPCServer(path=sock_path)
    held: list[Any] = []
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hold(request: Any, respond: Any, conn: IPCConnection) -> None:
        held.append(request)
        await forever

    server.on("request", hold)
    await within(server.start())
    client = IPCClient(path=sock_path)
    closes: list[Any] = []
    client.on("close", closes.append)
    try:
        await within(client.connect())
        futures = [asyncio.ensure_future(client.request(i, timeout=60)) for i in range(100)]
        await wait_until(lambda: len(held) == 100, "the requests to reach the server")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert client.destroy("enough")
        results = await within(asyncio.gather(*futures, return_exceptions=True))
        assert loop.time() - started < 0.5
        assert all(isinstance(r, ConnectionDestroyedError) for r in results), results[:3]
        assert closes == ["enough"]
        with pytest.raises(ConnectionClosedError):
            await within(client.request("after", timeout=1))
        await wait_until(lambda: not server.connections, "the server to see the client go")
    finally:
        forever.cancel()
        await within(server.close())


async def test_request_timeout_never_poisons_the_connection(sock_path: str) -> None:
    """A timed-out request's late answer is dropped; requests before and after get their own answers."""
    server = IPCServer(path=sock_path)
    release = asyncio.Event()
    answered_late = asyncio.Event()

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "slow":
            try:
                await release.wait()
            except asyncio.CancelledError:
                await release.wait()  # the caller gave up; this handler answers anyway
            await respond("late answer")
            answered_late.set()
        else:
            await respond({"echo": request})

    server.on("request", handler)
    await within(server.start())
    client = IPCClient(path=sock_path)
    errors: list[BaseException] = []
    client.on("error", errors.append)
    messages: list[Any] = []
    client.on("message", messages.append)
    try:
        await within(client.connect())
        with pytest.raises(RequestTimeoutError):
            await within(client.request("slow", timeout=0.2))
        assert await within(client.request("meanwhile")) == {"echo": "meanwhile"}
        release.set()
        await within(answered_late.wait())
        assert await within(client.ping("p")) >= 0  # the late answer has arrived by now
        assert await within(client.request("after")) == {"echo": "after"}
        assert errors == []
        assert messages == []
        assert client.status is IPCClientStatus.READY
    finally:
        await within(client.close())
        await within(server.close())


async def test_server_close_during_a_request_stream(sock_path: str) -> None:
    """Closing a connection while its client keeps requesting: nothing fails, nothing runs twice.

    The server's END promises that what it did not answer it did not run (the
    ``retry`` extension); the client sends those requests again once it is back.
    """
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    server = IPCServer(path=sock_path)
    server_errors: list[BaseException] = []
    runs: dict[tuple[int, int], int] = {}

    def on_request(request: Any, respond: Any, conn: IPCConnection) -> Any:
        key = (request[0], request[1])
        runs[key] = runs.get(key, 0) + 1
        return respond({"echo": request})

    server.on("error", lambda error, conn: server_errors.append(error))
    server.on("request", on_request)
    await within(server.start())
    client = IPCClient(path=sock_path, retries=5, max_retry_time=1.0)
    answered = 0
    failed: list[BaseException] = []
    stop = False

    async def requester(lane: int) -> None:
        nonlocal answered
        i = 0
        while not stop:
            try:
                answer = await client.request([lane, i], timeout=30)
            except ConnectionClosedError as exc:
                failed.append(exc)
                return
            assert answer == {"echo": [lane, i]}
            answered += 1
            i += 1

    try:
        await within(client.connect())
        lanes = [asyncio.ensure_future(requester(lane)) for lane in range(20)]
        await wait_until(lambda: answered >= 500, "the requests to flow")
        # Requests keep arriving after the server has sent END and FIN.
        await within(server.connections[0].close("go away, come back", allow_reconnect=True))
        before = answered
        await wait_until(lambda: client.status is IPCClientStatus.READY, "the reconnect")
        await wait_until(lambda: answered >= before + 500, "the requests to flow again")
        stop = True
        await within(asyncio.gather(*lanes))
        assert failed == []
        assert runs
        assert set(runs.values()) == {1}, "a request ran twice"
        assert loop_errors == []
        assert server_errors == []
    finally:
        loop.set_exception_handler(previous)
        await within(client.close())
        await within(server.close())


# ---------------------------------------------------------------------- reconnecting


async def test_reconnect_backs_off_then_gives_up_after_retries(sock_path: str) -> None:
    """After a server dies: attempts back off (0.5 s doubling, capped, jittered), then close for good."""
    async with children() as spawn:
        server = await spawn("server", sock_path, "0")
        await server.expect("READY")
        client = IPCClient(path=sock_path, retries=3, max_retry_time=1.0)
        closes: list[Any] = []
        client.on("close", closes.append)
        await within(client.connect())
        log = statuses(client)
        server.signal(signal.SIGKILL)
        await wait_until(lambda: closes, "the client to give up", 10)
        assert client.status is IPCClientStatus.IDLE
        waits = [
            b[0] - a[0]
            for a, b in itertools.pairwise(log)
            if a[1] is IPCClientStatus.RECONNECTING and b[1] is IPCClientStatus.CONNECTING
        ]
        assert len(waits) == 3, log  # exactly `retries` attempts
        for attempt, waited in enumerate(waits, start=1):
            base = min(0.5 * 2 ** (attempt - 1), 1.0)
            assert base / 2 - 0.02 <= waited <= base + 0.15, (attempt, waited)
        # Closed for good: no reconnect task left, and requests fail at once.
        loop_tasks = [t.get_coro() for t in asyncio.all_tasks()]
        assert not any(getattr(c, "__name__", "") == "_reconnect_loop" for c in loop_tasks)
        with pytest.raises(ConnectionClosedError):
            await within(client.request("x", timeout=5), timeout=1)


async def test_many_clients_losing_the_server_do_not_storm(sock_path: str) -> None:
    """200 clients lose the server at once: their first attempts spread over a window, then all return."""
    count = 200
    async with children() as spawn:
        server = await spawn("server", sock_path, "0")
        await server.expect("READY")
        clients = [IPCClient(path=sock_path, retries=8, max_retry_time=1.0) for _ in range(count)]
        await within(asyncio.gather(*(c.connect(i) for i, c in enumerate(clients))))
        first_attempt: dict[int, float] = {}
        loop = asyncio.get_running_loop()

        def recorder(i: int) -> Callable[[IPCClientStatus], None]:
            def on_status(status: IPCClientStatus) -> None:
                if status is IPCClientStatus.CONNECTING and i not in first_attempt:
                    first_attempt[i] = loop.time()

            return on_status

        for i, client in enumerate(clients):
            client.on("status", recorder(i))
        killed = loop.time()
        server.signal(signal.SIGKILL)
        await wait_until(lambda: len(first_attempt) == count, "every client's first attempt", 5)
        times = sorted(t - killed for t in first_attempt.values())
        spread = times[-1] - times[0]
        busiest = max(sum(1 for t in times if s <= t < s + 0.010) for s in times)
        assert times[0] >= 0.2, f"a client came back after {times[0] * 1000:.0f} ms"
        assert spread >= 0.15, f"first attempts spread over only {spread * 1000:.0f} ms"
        assert busiest <= count // 5, f"{busiest} of {count} attempts within 10 ms"

        restarted = await spawn("server", sock_path, "0")
        await restarted.expect("READY")
        await wait_until(
            lambda: all(c.status is IPCClientStatus.READY for c in clients), "all to return", 20
        )
        answers = await within(asyncio.gather(*(c.request(i) for i, c in enumerate(clients))))
        assert answers == [{"echo": i} for i in range(count)]
        await within(asyncio.gather(*(c.close() for c in clients)))


# ---------------------------------------------------------------------- the child processes


async def child_server(path: str, report_at: int) -> None:
    """Serve at ``path``: echo requests, hold ``{"hold": i}`` ones forever; print HELD n."""
    server = IPCServer(path=path, max_concurrent_requests=None)  # holds 1,000 at once
    held = 0
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        nonlocal held
        if isinstance(request, dict) and "hold" in request:
            held += 1
            if held == report_at:
                print(f"HELD {held}", flush=True)
            await forever
        await respond({"echo": request})

    server.on("request", handler)
    await server.start()
    print("READY", flush=True)
    await wait_for_stdin_eof()
    forever.cancel()
    await server.close()


async def child_client(path: str, name: str, topics: list[str]) -> None:
    """Connect as ``name``, subscribe to ``topics``; never answer the request "hang"."""
    client = IPCClient(path=path, reconnect=False)
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(request: Any, respond: Any) -> None:
        if request == "hang":
            print("GOT hang", flush=True)
            await forever
        await respond("ok")

    client.on("request", handler)
    await client.connect(name)
    for topic in topics:
        await client.subscribe(topic)
    print(f"READY {os.getpid()}", flush=True)
    await wait_for_stdin_eof()
    forever.cancel()
    await client.close()


async def child_sender(path: str, count: int) -> None:
    """Send ``count`` numbered messages, then close gracefully at once."""
    client = IPCClient(path=path, reconnect=False)
    await client.connect("sender")
    for i in range(count):
        await client.send(i)
    await client.close("sent everything", timeout=600)
    print(f"DONE {count}", flush=True)


async def wait_for_stdin_eof() -> None:
    """Return when the parent closes our stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.read()
    transport.close()


def main(argv: list[str]) -> None:
    """Play one part: ``server PATH N``, ``client PATH NAME TOPIC...``, ``sender PATH N``."""
    role, path, *rest = argv
    if role == "server":
        asyncio.run(child_server(path, int(rest[0])))
    elif role == "client":
        asyncio.run(child_client(path, rest[0], rest[1:]))
    elif role == "sender":
        asyncio.run(child_sender(path, int(rest[0])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
