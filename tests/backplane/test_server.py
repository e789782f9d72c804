"""IPCServer with a backplane, in this process: lifecycle, the event, stats, security, Node clients.

The servers here share this process's loop (the tests of ``test_cluster``
run them in processes of their own); the broker is real all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers import eventually
from ipc_server import IPCClient, IPCServer, NoRespondersError
from ipc_server.backplane import NatsBackplane, handover
from node_peer import NodePeers, require_node

from .broker import Broker
from .conftest import FAST

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder() -> Any:
    import shutil
    import tempfile

    made = tempfile.mkdtemp(prefix="bps", dir="/tmp")
    try:
        yield Path(made)
    finally:
        shutil.rmtree(made, ignore_errors=True)


@contextlib.asynccontextmanager
async def server(
    folder: Path,
    name: str,
    url: str,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    **options: Any,
) -> AsyncIterator[IPCServer]:
    """A started IPCServer at ``folder/name`` with a backplane on ``url``; closed after."""
    backplane = NatsBackplane(
        servers=[url], namespace=options.pop("namespace", "test"), **{**FAST, **options}
    )
    made = IPCServer(path=str(folder / name), backplane=backplane)
    if events is not None:
        made.on("backplane", lambda kind, info: events.append((kind, info)))
    await made.start()
    try:
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def client(folder: Path, name: str) -> AsyncIterator[IPCClient]:
    made = IPCClient(path=str(folder / name))
    await made.connect()
    try:
        yield made
    finally:
        await made.close()


async def cross(a: IPCServer, b_client: IPCClient, topic: str = "ping") -> None:
    """A publish on ``a`` reaches ``b_client`` (subscribed here) through the broker."""
    got: list[Any] = []
    b_client.on(topic, got.append)
    assert await b_client.subscribe(topic)
    await a.publish(topic, "hello")
    await eventually(lambda: got == ["hello"])


async def test_starts_down_and_comes_up(folder: Path) -> None:
    """No broker: start() returns after connect_timeout with the backplane down, local work
    goes on, a call with no local worker fails at once saying why; the broker comes: "up"."""
    broker = Broker(folder)  # not started yet
    events: list[tuple[str, dict[str, Any]]] = []
    began = time.monotonic()
    async with server(folder, "a", broker.url, events, connect_timeout=0.3) as a:
        assert time.monotonic() - began < 1.5
        assert [kind for kind, _ in events] == ["down"]
        assert a.stats()["backplane"]["up"] == 0
        async with client(folder, "a") as local:
            got: list[Any] = []
            local.on("t", got.append)
            began = time.monotonic()
            assert await local.subscribe("t")  # at once, applied when the broker is back
            assert time.monotonic() - began < 0.5
            await a.publish("t", 1)
            await eventually(lambda: got == [1])
            with pytest.raises(NoRespondersError, match="unreachable"):
                await a.call("svc", 1)
            with pytest.raises(NoRespondersError, match="unreachable") as raised:
                await local.call("svc", 1)  # the reason crosses the wire too
            assert raised.value.service == "svc"
            broker.start()
            try:
                await eventually(lambda: [k for k, _ in events] == ["down", "up"], timeout=10)
                async with server(folder, "b", broker.url) as b:
                    await b.publish("t", 2)
                    await eventually(lambda: got == [1, 2])
            finally:
                broker.stop()


async def test_stats_and_the_gap_event(
    broker: Broker, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stats()["backplane"] has the counters; a server's lost messages are a "gap" event."""
    monkeypatch.setattr(handover, "INLINE_BATCH", 0)  # all through the queue, which holds one
    events: list[tuple[str, dict[str, Any]]] = []
    async with (
        server(folder, "a", broker.url) as a,
        server(folder, "b", broker.url, events, inbound_limit=1) as b,
    ):
        stats = a.stats()["backplane"]
        for key in ("published", "received", "dropped", "gaps", "reconnects"):
            assert stats[key] == 0
        async with client(folder, "b") as sub:
            sub.on("t", lambda m: None)
            assert await sub.subscribe("t")
            sent = 0
            while b.stats()["backplane"]["gaps"] == 0:  # b's inbound queue holds one message
                assert sent < 50_000, "no message was ever dropped"
                for _ in range(500):
                    await a.publish("t", sent)
                    sent += 1
                await asyncio.sleep(0.05)
            await a.publish("t", "last")  # a hole shows when a later message arrives
            sent += 1
            await eventually(
                lambda: (
                    b.stats()["backplane"]["received"] + b.stats()["backplane"]["missed"] == sent
                )
            )
        assert a.stats()["backplane"]["published"] == sent
        gaps = [info for kind, info in events if kind == "gap"]
        assert gaps
        assert {info["origin"] for info in gaps} == {a.server_id}
        assert sum(info["missed"] for info in gaps) == b.stats()["backplane"]["missed"]
        # Each broker message dropped held one or more of a's messages.
        assert 1 <= b.stats()["backplane"]["dropped"] <= b.stats()["backplane"]["missed"]


async def test_cluster_broadcast(broker: Broker, folder: Path) -> None:
    """broadcast(scope="cluster") reaches every server's connections; the default stays local."""
    async with (
        server(folder, "a", broker.url) as a,
        server(folder, "b", broker.url) as b,
        client(folder, "a") as ca,
        client(folder, "b") as cb,
    ):
        got_a: list[Any] = []
        got_b: list[Any] = []
        ca.on("message", got_a.append)
        cb.on("message", got_b.append)
        await eventually(lambda: len(b.connections) == 1)
        assert await a.broadcast("local only") == 1
        assert await a.broadcast({"to": "all"}, scope="cluster") == 1
        await eventually(lambda: got_b == [{"to": "all"}])
        assert got_a == ["local only", {"to": "all"}]
        with pytest.raises(ValueError, match="scope"):
            await a.broadcast(1, scope="everywhere")  # type: ignore[arg-type]


async def test_worker_groups_local_while_down(folder: Path) -> None:
    """While the broker is down a worker group is served by this server's members."""
    broker = Broker(folder)
    async with (
        server(folder, "a", broker.url, connect_timeout=0.2) as a,
        client(folder, "a") as w1,
        client(folder, "a") as w2,
    ):
        got: list[Any] = []
        for w in (w1, w2):
            w.on("jobs", got.append)
            assert await w.subscribe("jobs", group="g")
        for i in range(10):
            await a.publish("jobs", i)
        await eventually(lambda: sorted(got) == list(range(10)))


# ---------------------------------------------------------------------- security


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """A broker that speaks TLS only (trustme) and wants a user and password."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    pem = tmp_path / "server.pem"
    config = (
        f'tls {{\n  cert_file: "{pem}"\n  key_file: "{pem}"\n}}\n'
        'authorization {\n  user: "app"\n  password: "s3cret-pw"\n}\n'
    )
    made = Broker(tmp_path, config, scheme="tls")
    made.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        yield made, context
    finally:
        made.stop()


async def test_tls_and_password(
    tls_broker: Any, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS with the server's kind of ssl context, user and password: traffic crosses; a wrong
    password leaves the backplane down, and the password is in no log line and no repr."""
    broker, context = tls_broker
    caplog.set_level(logging.DEBUG, logger="ipc_server")
    good = {"ssl": context, "user": "app", "password": "s3cret-pw"}
    async with (
        server(folder, "a", broker.url, **good) as a,
        server(folder, "b", broker.url, **good) as b,
    ):
        assert a.backplane is not None
        assert a.backplane.is_up
        assert "s3cret" not in repr(a.backplane)
        async with client(folder, "b") as cb:
            await cross(a, cb)
        assert b.stats()["backplane"]["received"] == 1
    events: list[tuple[str, dict[str, Any]]] = []
    bad = {"ssl": context, "user": "app", "password": "wrong-pw-123", "connect_timeout": 0.5}
    async with server(folder, "c", broker.url, events, **bad) as c:
        assert c.backplane is not None
        assert not c.backplane.is_up
        assert [kind for kind, _ in events] == ["down"]
    url = broker.url.replace("tls://", "tls://app:s3cret-pw@")
    async with server(folder, "d", url, ssl=context) as d:
        assert d.backplane is not None
        assert d.backplane.is_up
        assert "s3cret" not in repr(d.backplane)
    for record in caplog.records:
        text = record.getMessage()
        assert "s3cret" not in text
        assert "wrong-pw" not in text


# ---------------------------------------------------------------------- Node clients


async def test_node_client_gets_a_publish_from_another_host(broker: Broker, folder: Path) -> None:
    """A Node net-ipc client of one server receives what a Python client of another publishes."""
    require_node()
    async with (
        server(folder, "a", broker.url) as a,
        server(folder, "b", broker.url),
        NodePeers() as peers,
        client(folder, "a") as publisher,
    ):
        node = await peers.client({"path": str(folder / "b")})
        assert await node.request({"sub": "news.eu"}) == {"result": True}
        assert await publisher.publish("news.eu", {"from": "python", "n": [1, 2]})
        event = await node.wait_event("message", timeout=10)
        assert event["data"] == {"pub": "news.eu", "message": {"from": "python", "n": [1, 2]}}
        # And back: the Node client publishes, a Python subscriber of the other server gets it.
        got: list[Any] = []
        publisher.on("replies", got.append)
        assert await publisher.subscribe("replies")
        assert await node.request({"pub": "replies", "message": "from node"}) == {"result": True}
        await eventually(lambda: got == ["from node"])
        assert a.stats()["backplane"]["received"] == 1


async def test_oversize_publish_is_local_and_reported(broker: Broker, folder: Path) -> None:
    """A message over the broker's max_payload still reaches local subscribers; crossing
    hosts it is refused and reported on error, and the next message crosses."""
    async with (
        server(folder, "a", broker.url) as a,
        server(folder, "b", broker.url),
        client(folder, "a") as near,
        client(folder, "b") as far,
    ):
        errors: list[BaseException] = []
        a.on("error", lambda error, connection: errors.append(error))
        got_near: list[Any] = []
        got_far: list[Any] = []
        near.on("big", got_near.append)
        far.on("big", got_far.append)
        assert await near.subscribe("big")
        assert await far.subscribe("big")
        huge = "x" * (2 << 20)  # the broker's max_payload is 1 MiB
        assert await a.publish("big", huge) == 1
        await eventually(lambda: got_near == [huge])
        assert [type(e).__name__ for e in errors] == ["MessageTooLargeError"]
        await a.publish("big", "small")
        await eventually(lambda: got_far == ["small"])
        assert a.stats()["backplane"]["refused"] == 1


def test_the_blocking_server_takes_scope(broker: Broker, folder: Path) -> None:
    """ipc_server.sync.IPCServer forwards broadcast's and survey's scope to the asyncio server."""
    from boundkit import wait_for
    from ipc_server.sync import IPCClient as SyncClient
    from ipc_server.sync import IPCServer as SyncServer

    def backplane() -> NatsBackplane:
        return NatsBackplane(servers=[broker.url], namespace="test", **FAST)

    with (
        SyncServer(path=str(folder / "a"), backplane=backplane()) as a,
        SyncServer(path=str(folder / "b"), backplane=backplane()) as b,
        SyncClient(path=str(folder / "b")) as cb,
    ):
        got: list[Any] = []
        cb.on("message", got.append)
        cb.on("request", lambda request, respond: respond(f"b has {request}"))
        wait_for(lambda: b.connections, "the client is admitted on b")
        assert a.broadcast("local", timeout=5) == 0
        assert a.broadcast("everywhere", timeout=5, scope="cluster") == 0
        wait_for(lambda: got == ["everywhere"], "the broadcast crosses to b")
        replies = [reply for _, reply in a.survey("jobs?", timeout=5, scope="cluster")]
        assert replies == ["b has jobs?"]


async def test_a_server_restarts_with_its_backplane(broker: Broker, folder: Path) -> None:
    """close() then start() again: the backplane comes back up, and publishes cross
    hosts both ways as before, with no gap reported for the time it was closed."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with server(folder, "a", broker.url, events) as a, server(folder, "b", broker.url) as b:
        async with client(folder, "b") as on_b:
            await cross(a, on_b, "first")
        await a.close()
        await b.publish("while-closed", 1)
        await a.start()
        assert a.stats()["backplane"]["up"] == 1
        assert [kind for kind, _ in events] == ["up", "up"]
        async with client(folder, "b") as on_b, client(folder, "a") as on_a:
            await cross(a, on_b, "again")
            await cross(b, on_a, "back")
            await cross(a, on_b, "first")  # the stream a numbered before it closed goes on
        assert b.stats()["backplane"]["gaps"] == 0
        assert a.stats()["backplane"]["gaps"] == 0
