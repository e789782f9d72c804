"""The blocking API (``ipc_server.sync``) over real Unix sockets.

The blocking client is tested against the asyncio server (run on a loop in a
thread of the test process) and against the blocking server. Every wait has a
deadline: events from library threads are collected in queues read with a
timeout, and conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import trustme

from helpers import short_socket_path
from ipc_server import (
    ConnectionClosedError,
    ConnectionDestroyedError,
    IPCClientStatus,
    IPCConnection,
    RemoteError,
    RequestTimeoutError,
)
from ipc_server import IPCServer as AsyncIPCServer
from ipc_server.errors import HandshakeError
from ipc_server.sync import IPCClient, IPCServer

DEADLINE = 10.0
T = TypeVar("T")


# ---------------------------------------------------------------------- helpers


def eventually(predicate: Callable[[], object], timeout: float = DEADLINE, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(0.002)


class Inbox:
    """A listener that queues its calls; :meth:`get` waits for the next one with a deadline."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.threads: list[str] = []

    def __call__(self, *args: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.calls.put(args)

    def get(self, timeout: float = DEADLINE) -> tuple[Any, ...]:
        try:
            return self.calls.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no call within {timeout} s") from None

    def empty(self) -> bool:
        return self.calls.empty()


class LoopThread:
    """An asyncio event loop on its own thread, to run the asyncio server beside blocking code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


async def handle_request(request: Any, respond: Any, connection: IPCConnection) -> None:
    """The test servers' request handler: echo, plus a few commands."""
    cmd = request.get("cmd") if isinstance(request, dict) else None
    if cmd == "fail":
        raise ValueError(request["why"])
    if cmd == "sleep":
        await asyncio.sleep(request["seconds"])
        await respond(request.get("value"))
    elif cmd == "ask":
        await respond(await connection.request(request["data"], timeout=5))
    else:
        await respond(request)


@pytest.fixture
def path() -> Iterator[str]:
    with short_socket_path() as p:
        yield p


@pytest.fixture
def aio_server(path: str) -> Iterator[tuple[AsyncIPCServer, LoopThread]]:
    loop = LoopThread()
    server = AsyncIPCServer(path=path)
    server.on("request", handle_request)
    loop.run(server.start())
    try:
        yield server, loop
    finally:
        loop.run(server.close())
        loop.close()


@pytest.fixture
def server(path: str) -> Iterator[IPCServer]:
    srv = IPCServer(path=path)
    srv.on("request", handle_request)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def client(path: str, server: IPCServer) -> Iterator[IPCClient]:
    c = IPCClient(path=path)
    c.connect()
    try:
        yield c
    finally:
        c.destroy()


# ---------------------------------------------------------------------- against the asyncio server


def test_request_send_ping_against_asyncio_server(
    aio_server: tuple[AsyncIPCServer, LoopThread], path: str
) -> None:
    """request returns the answer, send reaches the server's message event, ping returns seconds."""
    server, _ = aio_server
    messages = Inbox()
    server.on("message", messages)
    with IPCClient(path=path) as client:
        assert client.is_ready
        assert client.id == server.connections[0].id
        assert client.request({"a": [1, "é"]}) == {"a": [1, "é"]}
        client.send("hello")
        assert messages.get()[0] == "hello"
        latency = client.ping("data")
        assert 0 < latency < DEADLINE
    assert client.status is IPCClientStatus.IDLE


def test_remote_error(aio_server: tuple[AsyncIPCServer, LoopThread], path: str) -> None:
    """A server handler that raises gives the blocking requester a RemoteError with its type."""
    with IPCClient(path=path) as client:
        with pytest.raises(RemoteError) as info:
            client.request({"cmd": "fail", "why": "no such thing"})
        assert (info.value.type, info.value.message) == ("ValueError", "no such thing")
        assert client.request("still fine") == "still fine"


def test_request_timeout(aio_server: tuple[AsyncIPCServer, LoopThread], path: str) -> None:
    """A request without an answer in time raises RequestTimeoutError; the late answer is dropped."""
    with IPCClient(path=path) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            client.request({"cmd": "sleep", "seconds": 0.3, "value": "late"}, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - started < 0.3
        assert client.request({"cmd": "sleep", "seconds": 0.4, "value": "in time"}) == "in time"
        assert client.request("next") == "next"


def test_timeout_arguments_are_checked(
    aio_server: tuple[AsyncIPCServer, LoopThread], path: str
) -> None:
    """A negative timeout is a ValueError; 0 and None wait without a bound."""
    with IPCClient(path=path) as client:
        with pytest.raises(ValueError, match="timeout"):
            client.request("x", timeout=-1)
        assert client.request("x", timeout=0) == "x"
        assert client.request("x", timeout=None) == "x"


def test_pubsub(aio_server: tuple[AsyncIPCServer, LoopThread], path: str) -> None:
    """subscribe/publish/unsubscribe return bools; topic listeners get every message, falsy ones too."""
    messages: list[Any] = [{"a": 1}, 0, "", None, False]
    got = Inbox()
    with IPCClient(path=path) as client:
        client.on("news", got)
        assert client.subscribe("news") is True
        assert client.topics == ["news"]
        for message in messages:
            assert client.publish("news", message) is True
        assert [got.get()[0] for _ in messages] == messages
        assert set(got.threads) == {"ipc_server listeners"}
        assert client.unsubscribe("news") is True
        assert client.unsubscribe("news") is False


def test_subscription_iterator(aio_server: tuple[AsyncIPCServer, LoopThread], path: str) -> None:
    """subscription() yields an iterator with get(timeout) and for-iteration; exit unsubscribes."""
    server, loop = aio_server
    with IPCClient(path=path) as client:
        with client.subscription("t") as sub:
            assert list(server.topics) == ["t"]
            with pytest.raises(TimeoutError):
                sub.get(timeout=0.05)
            for i in range(3):
                loop.run(server.publish("t", i))
            assert sub.get(timeout=DEADLINE) == 0
            seen = []
            for message in sub:
                seen.append(message)
                if len(seen) == 2:
                    break
            assert seen == [1, 2]
        eventually(lambda: not server.topics, what="unsubscribed on exit")


def test_topics_named_like_events_reach_subscriptions_only(
    client: IPCClient, server: IPCServer
) -> None:
    """A message on a topic named like a built-in event goes to subscription(), not to that event."""
    closes = Inbox()
    client.on("close", closes)
    with client.subscription("close") as sub:
        assert server.publish("close", "not a close") == 1
        assert sub.get() == "not a close"
    assert closes.empty()
    assert client.is_ready


def test_subscription_ends_when_client_closes(
    aio_server: tuple[AsyncIPCServer, LoopThread], path: str
) -> None:
    """Iteration over a subscription ends, and get() raises, once the client closes for good."""
    client = IPCClient(path=path).connect()
    done = queue.Queue[list[Any]]()
    with client.subscription("t") as sub:

        def consume() -> None:
            done.put(list(sub))

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert client.publish("t", "one") is True
        client.destroy()
        assert done.get(timeout=DEADLINE) == ["one"]
        consumer.join(DEADLINE)
        with pytest.raises(ConnectionClosedError):
            sub.get(timeout=DEADLINE)


def test_server_requests_the_client(
    aio_server: tuple[AsyncIPCServer, LoopThread], path: str
) -> None:
    """The server can request the client: a request listener answers, on the listener thread."""
    server, loop = aio_server
    with IPCClient(path=path) as client:
        # No listener: the server gets None (never a hang).
        assert loop.run(server.survey("q", timeout=5))[0][1] is None
        client.on("request", lambda request, respond: respond({"got": request}))
        assert client.request({"cmd": "ask", "data": 7}) == {"got": 7}
        [(connection, reply)] = loop.run(server.survey("q", timeout=5))
        assert connection.id == client.id
        assert reply == {"got": "q"}


def test_client_listener_failure_reaches_the_server(
    aio_server: tuple[AsyncIPCServer, LoopThread], path: str
) -> None:
    """A client request listener that raises sends a RemoteError back and reports on ``error``."""
    server, loop = aio_server
    errors = Inbox()

    def fail(request: Any, respond: Any) -> None:
        raise KeyError("nope")

    with IPCClient(path=path) as client:
        client.on("error", errors)
        client.on("request", fail)
        [(_, reply)] = loop.run(server.survey("q", timeout=5))
        assert isinstance(reply, RemoteError)
        assert reply.type == "KeyError"
        assert isinstance(errors.get()[0], KeyError)


def test_msgpack_compress_handshake(path: str) -> None:
    """msgpack bodies, the shared deflate stream and the HTTP upgrade work, with threads writing at once."""
    with IPCServer(path=path) as server:
        server.on("request", handle_request)
        with IPCClient(path=path, codec="msgpack", compress=True, handshake=True) as client:
            assert client.info["messagepack"] is True
            assert client.info["compress"] is True
            assert client.request({"blob": b"\x00\xff" * 1000}) == {"blob": b"\x00\xff" * 1000}
            results: queue.Queue[bool] = queue.Queue()

            def work(k: int) -> None:
                results.put(all(client.request([k, i]) == [k, i] for i in range(200)))

            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE)
            assert [results.get(timeout=DEADLINE) for _ in threads] == [True] * 4


def test_tls_over_tcp() -> None:
    """TLS over TCP: requests from several threads, a server request, and a graceful close."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with IPCServer(host="127.0.0.1", port=0, ssl=server_context) as server:
        server.on("request", handle_request)
        assert server.port
        client = IPCClient(host="127.0.0.1", port=server.port, ssl=client_context)
        client.on("request", lambda request, respond: respond(-request))
        with client.connect():
            assert client.request({"big": "x" * 100_000}) == {"big": "x" * 100_000}
            results: queue.Queue[bool] = queue.Queue()

            def work(k: int) -> None:
                results.put(all(client.request([k, i]) == [k, i] for i in range(100)))

            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE)
            assert [results.get(timeout=DEADLINE) for _ in threads] == [True] * 4
            assert client.request({"cmd": "ask", "data": 3}) == -3
        eventually(lambda: not server.connections, what="server saw the TLS client go")


# ---------------------------------------------------------------------- closing, destroying, reconnecting


def test_close_is_graceful(server: IPCServer, path: str) -> None:
    """close() lets a pending request finish, emits close(reason) once, and returns False after."""
    client = IPCClient(path=path).connect()
    closes = Inbox()
    statuses = Inbox()
    client.on("close", closes)
    client.on("status", statuses)
    answer: queue.Queue[Any] = queue.Queue()
    slow = threading.Thread(
        target=lambda: answer.put(client.request({"cmd": "sleep", "seconds": 0.2, "value": "ok"}))
    )
    slow.start()
    eventually(lambda: client._conn is not None and bool(client._conn.pending), what="sent")
    assert client.close("bye") is True
    assert answer.get(timeout=DEADLINE) == "ok"
    slow.join(DEADLINE)
    assert closes.get() == ("bye",)
    assert client.close() is False
    assert client.status is IPCClientStatus.IDLE
    seen = [statuses.get()[0] for _ in range(2)]
    assert seen == [IPCClientStatus.DISCONNECTED, IPCClientStatus.IDLE]
    with pytest.raises(ConnectionClosedError):
        client.request("after close")
    eventually(lambda: not server.connections, what="server saw the client go")


def test_destroy_fails_pending_requests(server: IPCServer, path: str) -> None:
    """destroy() fails a pending request with ConnectionDestroyedError at once."""
    client = IPCClient(path=path).connect()
    failure: queue.Queue[BaseException] = queue.Queue()

    def slow() -> None:
        try:
            client.request({"cmd": "sleep", "seconds": 5})
        except BaseException as exc:
            failure.put(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    eventually(lambda: any(c.id == client.id for c in server.connections))
    eventually(lambda: client._conn is not None and bool(client._conn.pending))
    started = time.monotonic()
    assert client.destroy("gone") is True
    assert isinstance(failure.get(timeout=DEADLINE), ConnectionDestroyedError)
    assert time.monotonic() - started < 2
    thread.join(DEADLINE)
    assert client.destroy() is False
    eventually(lambda: not server.connections, what="server saw the client go")


def test_server_close_for_good(server: IPCServer, path: str) -> None:
    """After server.close() the client closes for good and emits close with the server's reason."""
    client = IPCClient(path=path).connect()
    closes = Inbox()
    client.on("close", closes)
    server.close()
    assert closes.get() == ("server closed",)
    assert client.status is IPCClientStatus.IDLE
    with pytest.raises(ConnectionClosedError):
        client.request("x")


def test_reconnect_keeps_id_and_subscriptions(path: str) -> None:
    """After server.close(allow_reconnect=True) the client reconnects, keeps its id and its topics."""
    first = IPCServer(path=path).start()
    servers = [first]
    client = IPCClient(path=path, max_retry_time=1.0, retries=10)
    statuses = Inbox()
    client.on("status", statuses)
    news = Inbox()
    client.on("news", news)
    topics_at_ready = Inbox()
    client.on("ready", lambda info: topics_at_ready(list(servers[-1].topics)))
    client.connect()
    try:
        assert topics_at_ready.get() == ([],)
        assert client.subscribe("news") is True
        old_id = client.id
        first.close(allow_reconnect=True)
        with IPCServer(path=path) as second:
            servers.append(second)
            second.on("request", handle_request)
            # Subscriptions are restored before "ready" fires.
            assert topics_at_ready.get() == (["news"],)
            assert client.status is IPCClientStatus.READY
            assert client.id == old_id
            assert [c.id for c in second.connections] == [old_id]
            assert second.publish("news", "back") == 1
            assert news.get() == ("back",)
            assert client.request("x") == "x"
            seen = []
            while not statuses.empty():
                seen.append(statuses.get()[0])
            assert IPCClientStatus.RECONNECTING in seen
    finally:
        client.destroy()


def test_request_waits_for_a_reconnect(path: str) -> None:
    """A request made while the client reconnects waits for it (within its timeout) and succeeds."""
    first = IPCServer(path=path).start()
    client = IPCClient(path=path, max_retry_time=1.0, retries=10).connect()
    try:
        first.close(allow_reconnect=True)
        eventually(lambda: client.status is not IPCClientStatus.READY)
        with IPCServer(path=path) as second:
            second.on("request", handle_request)
            assert client.request("after", timeout=DEADLINE) == "after"
    finally:
        client.destroy()


def test_idle_client_answers_server_pings(server: IPCServer, path: str) -> None:
    """An idle blocking client still answers the server's pings (its background reader does)."""
    with IPCClient(path=path) as client:
        client.request("warm")
        [(connection, latency)] = server.ping(timeout=5)
        assert connection.id == client.id
        assert isinstance(latency, float)


# ---------------------------------------------------------------------- threads


def test_eight_threads_thousand_requests_each(client: IPCClient) -> None:
    """8 threads x 1,000 requests on one client: every answer is the right one."""
    wrong: list[tuple[int, int, Any]] = []
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(1000):
                reply = client.request({"k": k, "i": i})
                if reply != {"k": k, "i": i}:
                    wrong.append((k, i, reply))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert wrong == []
    assert client._conn is not None
    assert not client._conn.pending


def test_timeouts_of_some_threads_do_not_disturb_others(client: IPCClient) -> None:
    """Threads whose requests time out leave the reader role to the threads still waiting."""
    outcomes: queue.Queue[Any] = queue.Queue()

    def slow() -> None:
        try:
            client.request({"cmd": "sleep", "seconds": 0.5}, timeout=0.05)
        except RequestTimeoutError as exc:
            outcomes.put(exc)

    def patient(k: int) -> None:
        outcomes.put(client.request({"cmd": "sleep", "seconds": 0.2, "value": k}))

    threads = [threading.Thread(target=slow) for _ in range(3)]
    threads += [threading.Thread(target=patient, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    results = [outcomes.get(timeout=DEADLINE) for _ in threads]
    assert sum(isinstance(r, RequestTimeoutError) for r in results) == 3
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 2]


def test_listeners_may_call_the_client(client: IPCClient, server: IPCServer) -> None:
    """A listener (on the listener thread) may make blocking calls on its client."""
    answers = Inbox()
    client.on("message", lambda message: answers(client.request({"echo": message})))
    assert server.broadcast("hi") == 1
    assert answers.get() == ({"echo": "hi"},)


# ---------------------------------------------------------------------- deadlock guards


def test_server_method_from_handler_raises(server: IPCServer, client: IPCClient) -> None:
    """A handler (on the server's loop thread) calling a waiting server method gets RuntimeError."""

    def survey_from_handler(request: Any, respond: Any, connection: IPCConnection) -> None:
        if request == "survey":
            server.survey("q")

    server.off("request")
    server.on("request", survey_from_handler)
    with pytest.raises(RemoteError) as info:
        client.request("survey")
    assert info.value.type == "RuntimeError"
    assert "deadlock" in info.value.message


def test_client_call_from_its_servers_loop_thread_raises(
    server: IPCServer, client: IPCClient, path: str
) -> None:
    """A blocking client call to a server, made on that server's loop thread, raises RuntimeError."""
    inner = IPCClient(path=path).connect()
    try:

        def call_back(request: Any, respond: Any, connection: IPCConnection) -> None:
            respond(inner.request("inner"))

        server.off("request")
        server.on("request", call_back)
        with pytest.raises(RemoteError) as info:
            client.request("outer")
        assert info.value.type == "RuntimeError"
        assert "deadlock" in info.value.message
    finally:
        inner.destroy()


def test_publish_from_handler_works(server: IPCServer, client: IPCClient, path: str) -> None:
    """publish and broadcast do not wait on the loop, so a plain handler may call them."""
    news = Inbox()
    client.on("news", news)
    assert client.subscribe("news") is True

    def publish(request: Any, respond: Any, connection: IPCConnection) -> None:
        respond(server.publish("news", request))

    server.off("request")
    server.on("request", publish)
    assert client.request("flash") == 1
    assert news.get() == ("flash",)


# ---------------------------------------------------------------------- the blocking server


def test_blocking_server_operations(path: str) -> None:
    """The blocking server starts, answers with plain handlers, broadcasts, pings, surveys, closes."""
    server = IPCServer(path=path)
    connects = Inbox()
    messages = Inbox()
    server.on("connect", connects)

    @server.on("request")
    def answer(request: Any, respond: Any, connection: IPCConnection) -> None:
        respond({"thread": threading.current_thread().name, "request": request})

    with server:
        assert server.is_ready
        server.on("message", messages)
        client = IPCClient(path=path)
        client.on("message", messages)
        client.on("request", lambda request, respond: respond(request * 2))
        with client.connect(payload={"token": 1}):
            connection, payload = connects.get()
            assert payload == {"token": 1}
            assert [c.id for c in server.connections] == [client.id]
            reply = client.request("hi")
            assert reply == {"thread": "ipc_server loop", "request": "hi"}
            assert server.broadcast("to all") == 1
            assert messages.get() == ("to all",)
            assert server.survey(21, timeout=5) == [(connection, 42)]
            [(_, latency)] = server.ping(timeout=5)
            assert latency >= 0  # uvloop's loop.time() ticks in milliseconds
            assert server.run(connection.request(5, timeout=5)) == 10
    assert not server.is_ready


def test_address_in_use(server: IPCServer, path: str) -> None:
    """Starting a second server on a live path raises AddressInUseError and leaves it alone."""
    from ipc_server import AddressInUseError

    with pytest.raises(AddressInUseError):
        IPCServer(path=path).start()
    assert server.is_ready


# ---------------------------------------------------------------------- connecting


def test_connect_without_server(path: str) -> None:
    """connect() to a path where nothing listens raises the OSError and leaves the client idle."""
    client = IPCClient(path=path)
    with pytest.raises(FileNotFoundError):
        client.connect()
    assert client.status is IPCClientStatus.IDLE


def test_connect_refused_by_authenticate(path: str) -> None:
    """A server that refuses the client makes connect() raise HandshakeError with its reason."""
    with (
        IPCServer(path=path, authenticate=lambda payload, connection: "wrong token"),
        pytest.raises(HandshakeError, match="wrong token"),
    ):
        IPCClient(path=path).connect(payload="x")


def test_status_events_in_order(server: IPCServer, path: str) -> None:
    """status goes CONNECTING, CONNECTED, READY on connect and is emitted in order; ready gets info."""
    client = IPCClient(path=path)
    statuses = Inbox()
    ready = Inbox()
    client.on("status", statuses)
    client.on("ready", ready)
    client.connect()
    try:
        seen = [statuses.get()[0] for _ in range(3)]
        assert seen == [
            IPCClientStatus.CONNECTING,
            IPCClientStatus.CONNECTED,
            IPCClientStatus.READY,
        ]
        assert ready.get()[0]["id"] == client.id
        with pytest.raises(RuntimeError, match="idle"):
            client.connect()
    finally:
        client.close()


def test_coroutine_listeners_are_refused() -> None:
    """The blocking client takes plain functions as listeners; a coroutine function is a TypeError."""

    async def handler(message: Any) -> None:
        return None

    with pytest.raises(TypeError, match="plain functions"):
        IPCClient(path="/tmp/unused.sock").on("message", handler)  # type: ignore[type-var]


def test_once_and_off(server: IPCServer, client: IPCClient) -> None:
    """once() listeners run once; off() removes a listener."""
    first = Inbox()
    always = Inbox()
    client.once("message", first)
    client.on("message", always)
    server.broadcast(1)
    server.broadcast(2)
    assert [always.get()[0], always.get()[0]] == [1, 2]
    assert first.get() == (1,)
    assert first.empty()
    client.off("message", always)
    assert client.listener_count("message") == 0
