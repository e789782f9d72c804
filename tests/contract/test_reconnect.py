"""Reconnecting after the server allowed it: the id kept, topics restored, the status events."""

from __future__ import annotations

from typing import Any

from ipc_server import ConnectionClosedError, ConnectionDestroyedError, IPCClientStatus

from .adapters import Front
from .peer import Peer
from .polling import Background, Recorder, wait_until

S = IPCClientStatus

QUICK = {"retries": 10, "max_retry_time": 1.0}
"""Reconnect options that retry often enough for a server restarted at once."""


def in_order(seen: list[IPCClientStatus], wanted: list[IPCClientStatus]) -> bool:
    """Whether ``wanted`` occurs in ``seen`` in this order (not necessarily adjacent)."""
    rest = iter(seen)
    return all(status in rest for status in wanted)


def test_reconnect_keeps_the_id_and_restores_topics(front: Front, server: Peer) -> None:
    """After server.close(allow_reconnect=True) and a new server, the client is back with its id and topics."""
    client = front.connected(**QUICK)
    statuses: Recorder[IPCClientStatus] = Recorder()
    client.on("status", statuses)
    ready: Recorder[dict[str, Any]] = Recorder()
    client.on("ready", ready)
    news: Recorder[Any] = Recorder()
    client.on("news", news)
    assert client.subscribe("news") is True
    old_id = client.id
    server.restart()
    ready.wait_for(1, "ready after the reconnect")
    assert client.is_ready
    assert client.id == old_id
    assert server.connection_ids == [old_id]
    assert server.topics == {"news"}
    assert client.topics == ["news"]
    assert server.publish("news", "back") == 1
    assert news.wait_for(1, "news listener") == ["back"]
    assert client.publish("news", "me too") is True
    assert news.wait_for(2, "news listener") == ["back", "me too"]
    seen = statuses.items
    assert seen[0] is S.DISCONNECTED, seen
    assert seen[-4:] == [S.RECONNECTING, S.CONNECTING, S.CONNECTED, S.READY], seen
    assert S.IDLE not in seen


def test_subscription_survives_a_reconnect(front: Front, server: Peer) -> None:
    """A subscription() open across a reconnect keeps receiving, without subscribing again."""
    client = front.connected(**QUICK)
    ready: Recorder[dict[str, Any]] = Recorder()
    client.on("ready", ready)
    with client.subscription("t") as sub:
        server.restart()
        ready.wait_for(1, "ready after the reconnect")
        assert server.publish("t", "after") == 1
        assert sub.get(timeout=5.0) == "after"


def test_request_waits_for_the_reconnect(front: Front, server: Peer) -> None:
    """A request made while the client reconnects waits for it (within its timeout) and is answered."""
    client = front.connected(**QUICK)
    server.close(allow_reconnect=True)
    wait_until(lambda: not client.is_ready, "the client noticed")
    server.restart()
    assert client.request("after", timeout=8.0) == "after"


def test_server_close_with_reconnect_on_a_client_without_reconnect(
    front: Front, server: Peer
) -> None:
    """With reconnect=False, a server close that allows reconnecting still ends the client for good."""
    client = front.connected(reconnect=False)
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    server.restart()
    assert closes.wait_for(1, "close event") == ["server closed"]
    wait_until(lambda: client.status is S.IDLE, "the client IDLE")
    assert server.connection_count == 0


def test_gives_up_after_its_retries(front: Front, server: Peer) -> None:
    """When the server does not come back, the client emits close after its retries and ends IDLE."""
    client = front.connected(retries=1, max_retry_time=0.5)
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    statuses: Recorder[IPCClientStatus] = Recorder()
    client.on("status", statuses)
    server.close(allow_reconnect=True)
    closes.wait_for(1, "close event")
    wait_until(lambda: client.status is S.IDLE, "the client IDLE")
    assert in_order(statuses.items, [S.DISCONNECTED, S.RECONNECTING, S.IDLE]), statuses.items
    assert len(closes) == 1
    assert isinstance(closes.items[0], OSError)  # why the last attempt failed


def test_reconnect_after_the_connection_is_lost(front: Front, server: Peer) -> None:
    """A connection lost without END fails pending requests; the client reconnects itself, same id and topics."""
    client = front.connected(**QUICK)
    ready: Recorder[dict[str, Any]] = Recorder()
    client.on("ready", ready)
    client.subscribe("t")
    old_id = client.id
    pending = Background(lambda: client.request({"cmd": "hold"}, timeout=30.0), "request")
    server.held.wait_for(1, "the request at the server")
    server.drop_connections()
    error = pending.exception()
    assert isinstance(error, ConnectionClosedError)
    assert not isinstance(error, ConnectionDestroyedError)
    ready.wait_for(1, "ready after the reconnect")
    assert client.id == old_id
    assert server.connection_ids == [old_id]
    assert server.topics == {"t"}
    assert client.request("back") == "back"
