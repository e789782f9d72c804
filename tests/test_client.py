"""IPCClient over real Unix sockets (docs/guide.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import eventually, short_socket_path
from ipc_server import (
    ConnectionClosedError,
    ConnectionDestroyedError,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCServer,
    RequestTimeoutError,
)
from ipc_server.clientcore import backoff
from ipc_server.codecs import CodecName
from ipc_server.protocol import BIG_BODY


async def test_status_sequence(server: IPCServer, path: str) -> None:
    """Status goes IDLE -> CONNECTING -> CONNECTED -> READY, and back to IDLE after close, each emitted."""
    client = IPCClient(path=path)
    seen: list[IPCClientStatus] = []
    client.on("status", seen.append)
    assert client.status is IPCClientStatus.IDLE
    await client.connect()
    assert seen == [IPCClientStatus.CONNECTING, IPCClientStatus.CONNECTED, IPCClientStatus.READY]
    await client.close()
    assert seen[-1] is IPCClientStatus.IDLE
    assert [int(s) for s in IPCClientStatus] == [0, 1, 2, 3, 4, 5]


async def test_ready_event_and_info(server: IPCServer, path: str) -> None:
    """ready(info) carries the id the server assigned."""
    client = IPCClient(path=path)
    infos: list[dict[str, Any]] = []
    client.on("ready", infos.append)
    await client.connect()
    assert infos[0]["id"] == client.id == server.connections[0].id
    await client.close()


async def test_connect_to_nothing_fails_fast() -> None:
    """connect() to a path where nobody listens raises an OSError at once."""
    with short_socket_path() as path:
        client = IPCClient(path=path)
        with pytest.raises(FileNotFoundError):
            await client.connect()
        assert client.status is IPCClientStatus.IDLE


async def test_request_timeout_does_not_poison(server: IPCServer, path: str) -> None:
    """A timed-out request raises RequestTimeoutError; its late answer is dropped; the next request works."""
    release = asyncio.Event()

    @server.on("request")
    async def slow(request: Any, respond: Any, conn: IPCConnection) -> None:
        if request == "slow":
            await release.wait()
        await respond(request)

    client = IPCClient(path=path)
    await client.connect()
    with pytest.raises(RequestTimeoutError) as info:
        await client.request("slow", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    release.set()
    assert await client.request("fast") == "fast"
    await client.close()


async def test_destroy_fails_pending_at_once(server: IPCServer, path: str) -> None:
    """destroy() fails pending requests with ConnectionDestroyedError without waiting for timeouts."""
    server.on("request", lambda r, respond, c: None if r == "never" else respond(r))
    never = asyncio.Event()

    async def hang(request: Any, respond: Any, conn: IPCConnection) -> None:
        await never.wait()

    server.off("request")
    server.on("request", hang)
    client = IPCClient(path=path)
    closed: list[Any] = []
    client.on("close", closed.append)
    await client.connect()
    pending = [asyncio.ensure_future(client.request(i, timeout=30)) for i in range(10)]
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert client.destroy("going") is True
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert asyncio.get_running_loop().time() - started < 1
    assert all(isinstance(r, ConnectionDestroyedError) for r in results)
    assert closed == ["going"]
    with pytest.raises(ConnectionClosedError):
        await client.request("after")
    never.set()


async def test_close_answers_pending_first(server: IPCServer, path: str) -> None:
    """close() waits for pending requests to be answered, then ends the connection with its reason."""

    @server.on("request")
    async def later(request: Any, respond: Any, conn: IPCConnection) -> None:
        await asyncio.sleep(0.05)
        await respond(request + 1)

    reasons: list[Any] = []
    server.on("disconnect", lambda c, r: reasons.append(r))
    client = IPCClient(path=path)
    await client.connect()
    pending = [asyncio.ensure_future(client.request(i)) for i in range(5)]
    await asyncio.sleep(0)
    await client.close("done")
    assert await asyncio.gather(*pending) == [1, 2, 3, 4, 5]
    await eventually(lambda: reasons == ["done"])


async def test_server_requests_client(server: IPCServer, path: str) -> None:
    """The server can request the client; a client with no request listener answers None."""
    client = IPCClient(path=path)
    await client.connect()
    await eventually(lambda: server.connections)
    conn = server.connections[0]
    assert await conn.request("anyone?") is None

    @client.on("request")
    async def answer(request: Any, respond: Any) -> None:
        await respond({"client": request})

    assert await conn.request("hi") == {"client": "hi"}
    assert await conn.ping("x") >= 0
    await client.close()


async def test_subscription_iterator(server: IPCServer, path: str) -> None:
    """subscription() subscribes on entry, iterates messages, and unsubscribes on exit."""
    client = IPCClient(path=path)
    await client.connect()
    async with client.subscription("jobs") as jobs:
        assert "jobs" in server.topics
        for i in range(3):
            await server.publish("jobs", i)
        got = [await jobs.get(timeout=5) for _ in range(3)]
        assert got == [0, 1, 2]
    assert server.topics == {}
    await client.close()


async def test_subscription_keeps_explicit_subscribe(server: IPCServer, path: str) -> None:
    """Leaving a subscription() does not unsubscribe a topic also subscribed explicitly or by another subscription()."""
    client = IPCClient(path=path)
    await client.connect()
    await client.subscribe("a")
    async with client.subscription("a"):
        pass
    assert "a" in server.topics
    async with client.subscription("b"):
        async with client.subscription("b"):
            pass
        assert "b" in server.topics
    assert "b" not in server.topics
    await client.close()


async def test_subscription_ends_when_client_closes(server: IPCServer, path: str) -> None:
    """Iterating a subscription stops when the client closes for good."""
    client = IPCClient(path=path)
    await client.connect()
    got: list[Any] = []

    async def consume() -> None:
        async with client.subscription("t") as sub:
            async for message in sub:
                got.append(message)

    task = asyncio.ensure_future(consume())
    await eventually(lambda: "t" in server.topics)
    await server.publish("t", "one")
    await eventually(lambda: got == ["one"])
    client.destroy()
    await asyncio.wait_for(task, 5)


async def test_reconnect_keeps_id_and_subscriptions(path: str) -> None:
    """After the server goes away unexpectedly, the client reconnects, keeps its id and its subscriptions."""
    srv = IPCServer(path=path)
    await srv.start()
    client = IPCClient(path=path, retries=10, max_retry_time=1.0)
    await client.connect()
    await client.subscribe("news")
    got: list[Any] = []
    client.on("news", got.append)
    statuses: list[IPCClientStatus] = []
    client.on("status", statuses.append)
    old = client.id
    for conn in srv.connections:
        conn.destroy("crash")  # no END: looks like a dead server to the client
    await srv.close()
    srv = IPCServer(path=path)
    await srv.start()
    await eventually(lambda: client.is_ready and "news" in srv.topics, timeout=10)
    assert IPCClientStatus.RECONNECTING in statuses
    assert client.id == old
    await srv.publish("news", "back")
    await eventually(lambda: got == ["back"])
    await client.close()
    await srv.close()


async def test_request_during_reconnect_waits(path: str) -> None:
    """A request made while reconnecting is sent once the client is back, not failed."""
    srv = IPCServer(path=path)
    srv.on("request", lambda r, respond, c: respond(r))
    await srv.start()
    client = IPCClient(path=path, retries=10, max_retry_time=0.5)
    await client.connect()
    for conn in srv.connections:
        conn.destroy()
    await srv.close()
    await eventually(lambda: client.status is not IPCClientStatus.READY)
    pending = asyncio.ensure_future(client.request("queued", timeout=10))
    srv = IPCServer(path=path)
    srv.on("request", lambda r, respond, c: respond(r))
    await srv.start()
    assert await asyncio.wait_for(pending, 10) == "queued"
    await client.close()
    await srv.close()


async def test_gives_up_after_retries(path: str) -> None:
    """With nobody to reconnect to, the client gives up after its retries and emits close."""
    srv = IPCServer(path=path)
    await srv.start()
    client = IPCClient(path=path, retries=2, max_retry_time=0.5)
    closed: list[Any] = []
    client.on("close", closed.append)
    await client.connect()
    for conn in srv.connections:
        conn.destroy()
    await srv.close()
    await eventually(lambda: closed, timeout=10)
    assert client.status is IPCClientStatus.IDLE
    with pytest.raises(ConnectionClosedError):
        await client.request("x")


async def test_no_reconnect_option(path: str) -> None:
    """reconnect=False closes for good on the first disconnect."""
    srv = IPCServer(path=path)
    await srv.start()
    client = IPCClient(path=path, reconnect=False)
    closed: list[Any] = []
    client.on("close", closed.append)
    await client.connect()
    for conn in srv.connections:
        conn.destroy("x")
    await eventually(lambda: closed)
    await srv.close()


async def test_async_with(server: IPCServer, path: str) -> None:
    """async with connects on entry and closes on exit."""
    async with IPCClient(path=path) as client:
        assert client.is_ready
        assert await client.request(1) is None
    assert client.status is IPCClientStatus.IDLE
    assert not await client.close()


def test_backoff_has_jitter_and_cap() -> None:
    """Reconnect delays double from 0.5 s, are capped by max_retry_time, and are jittered."""
    delays = [backoff(n, 2.0) for n in (1, 2, 3, 4, 5) for _ in range(50)]
    first = delays[:50]
    assert all(0.25 <= d <= 0.5 for d in first)
    assert len(set(first)) > 10
    assert max(delays) <= 2.0


async def test_send_after_close_raises(server: IPCServer, path: str) -> None:
    """send/request/ping on a closed client raise ConnectionClosedError."""
    client = IPCClient(path=path)
    await client.connect()
    await client.close()
    for call in (client.send("x"), client.request("x"), client.ping()):
        with pytest.raises(ConnectionClosedError):
            await call


async def test_topic_named_like_an_event_does_not_fire_it(server: IPCServer, path: str) -> None:
    """A topic called "close" reaches subscription() but never fires the client's close listeners."""
    client = IPCClient(path=path)
    await client.connect()
    closed: list[Any] = []
    client.on("close", closed.append)
    async with client.subscription("close") as sub:
        await server.publish("close", "not a close")
        assert await sub.get(timeout=5) == "not a close"
    assert closed == []
    assert client.is_ready
    await client.close()


async def test_ready_after_reconnect_has_subscriptions_back(path: str) -> None:
    """ready fires after a reconnect only once the subscriptions are restored on the new server."""
    srv = IPCServer(path=path)
    await srv.start()
    client = IPCClient(path=path, retries=10, max_retry_time=0.5)
    await client.connect()
    await client.subscribe("t")
    seen_at_ready: list[bool] = []
    srv2: list[IPCServer] = []
    client.on("ready", lambda info: seen_at_ready.append("t" in srv2[0].topics))
    for conn in srv.connections:
        conn.destroy()
    await srv.close()
    srv2.append(IPCServer(path=path))
    await srv2[0].start()
    await eventually(lambda: seen_at_ready, timeout=10)
    assert seen_at_ready == [True]
    await client.close()
    await srv2[0].close()


async def test_request_waiting_for_reconnect_times_out_within_its_timeout(path: str) -> None:
    """A request made while no server is back raises RequestTimeoutError after its own timeout."""
    srv = IPCServer(path=path)
    await srv.start()
    client = IPCClient(path=path, retries=50, max_retry_time=0.5)
    await client.connect()
    for conn in srv.connections:
        conn.destroy()
    await srv.close()
    await eventually(lambda: client.status is not IPCClientStatus.READY)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeoutError):
        await client.request("x", timeout=0.3)
    assert loop.time() - started < 2
    client.destroy()


async def test_subscription_gets_message_sent_right_after_subscribing(
    server: IPCServer, path: str
) -> None:
    """A message the server publishes in the same breath as the subscribe answer reaches the iterator."""
    client = IPCClient(path=path)
    await client.connect()
    original = server.pubsub_request

    def pubsub_then_publish(conn: Any, request: Any, respond: Any) -> None:
        original(conn, request, respond)
        if request[0] == "sub":
            server._deliver("fast", "first!")  # same loop step as the answer

    server.pubsub_request = pubsub_then_publish  # type: ignore[method-assign]
    async with client.subscription("fast") as sub:
        assert await sub.get(timeout=5) == "first!"
    await client.close()


async def test_pubsub_calls_take_a_timeout(server: IPCServer, path: str) -> None:
    """subscribe, unsubscribe and publish accept timeout=."""
    client = IPCClient(path=path)
    await client.connect()
    assert await client.subscribe("a", timeout=5) is True
    assert await client.publish("a", 1, timeout=5) is True
    assert await client.unsubscribe("a", timeout=5) is True
    await client.close()


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_big_payloads_both_ways_from_several_clients_at_once(
    server: IPCServer, path: str, codec: CodecName
) -> None:
    """Big bodies, each read into a buffer of its own, come out whole while others are in flight.

    Three clients echo payloads of different big sizes at once, several times
    over, so that the receive buffers (one per thread, shared by connections,
    and the spare body buffer) are reused between connections and messages.
    """

    @server.on("request")
    def echo(request: Any, respond: Any, conn: IPCConnection) -> None:
        respond(request)

    clients = [await IPCClient(path=path, codec=codec).connect() for _ in range(3)]
    sizes = [BIG_BODY, 3 * BIG_BODY + 7, 2**20 + 1]

    async def echo_many(client: IPCClient, size: int) -> None:
        for round_ in range(4):
            payload = (
                bytes([(size + round_) % 251]) * size
                if codec == "msgpack"
                else {"s": chr(65 + round_) * size}
            )
            assert await client.request(payload, timeout=30) == payload

    await asyncio.gather(*(echo_many(c, n) for c, n in zip(clients, sizes, strict=True)))
    for client in clients:
        await client.close()


async def test_a_big_connect_payload_arrives_whole(path: str) -> None:
    """A CONNECTION packet bigger than BIG_BODY (read before the exchange is over) is read whole."""
    payloads: list[Any] = []
    server = IPCServer(path=path, max_handshake_size=8 * BIG_BODY)  # the default is BIG_BODY
    server.on("connect", lambda conn, payload: payloads.append(payload))
    payload = {"token": "t" * (4 * BIG_BODY)}
    async with server:
        client = await IPCClient(path=path).connect(payload)
        assert payloads == [payload]
        assert await client.request("after") is None
        await client.close()


async def test_topic_listeners_one_several_and_once(server: IPCServer, path: str) -> None:
    """A topic's event reaches one listener, several, and a once-listener a single time."""
    client = await IPCClient(path=path).connect()
    assert await client.subscribe("news") is True
    got: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
    client.on("news", got["a"].append)
    for message in (1, 2):
        await server.publish("news", message)
    await eventually(lambda: len(got["a"]) == 2)
    client.once("news", got["b"].append)
    for message in (3, 4):
        await server.publish("news", message)
    await eventually(lambda: len(got["a"]) == 4)
    client.off("news", got["a"].append)
    client.on("news", got["c"].append)
    await server.publish("news", 5)
    await eventually(lambda: got["c"] == [5])
    assert got == {"a": [1, 2, 3, 4], "b": [3], "c": [5]}
    await client.close()
