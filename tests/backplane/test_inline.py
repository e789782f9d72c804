"""How a message arrives: handed on in nats-py's reader while nothing of its
subscription waits, else through that subscription's queue and task; in order
and whole either way (``Link.subscribe``, ``link._Handover``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import nats
import pytest

from helpers import eventually
from ipc_server.backplane import NatsBackplane, inbound, link
from ipc_server.backplane.wire import Envelopes, read_publish

from .broker import Broker
from .conftest import Start


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many topic messages each way delivered: in the reader, by the task."""
    counts = {"inline": 0, "task": 0}
    now, on_topic = NatsBackplane._now, NatsBackplane._on_topic

    def counted_now(self: NatsBackplane, sub: Any, msg: Any) -> None:
        counts["inline"] += 1
        now(self, sub, msg)

    async def counted_on_topic(self: NatsBackplane, msg: Any) -> None:
        counts["task"] += 1
        await on_topic(self, msg)

    monkeypatch.setattr(NatsBackplane, "_now", counted_now)
    monkeypatch.setattr(NatsBackplane, "_on_topic", counted_on_topic)
    return counts


async def _flood(url: str, subject: str, count: int) -> None:
    """``count`` one-message envelopes from origin "far", numbered 1.., in one write."""
    envelopes = Envelopes("far")
    sender = await nats.connect(url)
    try:
        for seq in range(1, count + 1):
            body = envelopes.body(["far", 0, seq - 1])
            await sender.publish(subject, envelopes.publish(7, seq, [body], False, 0))
        await sender.flush()
    finally:
        await sender.close()


async def test_a_lone_message_is_handed_on_in_the_reader(
    backplanes: Start, paths: dict[str, int]
) -> None:
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("lone") is True
    a.publish("lone", "hello")
    await eventually(lambda: len(host_b.deliveries) == 1)
    assert host_b.deliveries == [("lone", "hello", "a")]
    assert paths == {"inline": 1, "task": 0}


async def test_a_flood_past_the_turns_budget_queues_in_order(
    backplanes: Start, broker: Broker, paths: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``INLINE_BATCH`` in a turn messages queue; the next turn's wait behind
    them: every one delivered, once, in order, none counted missing."""
    monkeypatch.setattr(link, "INLINE_BATCH", 8)
    b, host_b = await backplanes("b")
    assert await b.add_interest("flood") is True
    await _flood(broker.url, "test.t.flood", 2_000)
    await eventually(lambda: len(host_b.deliveries) == 2_000, timeout=20)
    assert [message[2] for _, message, _ in host_b.deliveries] == list(range(2_000))
    assert host_b.disorder == 0
    assert b.stats()["gaps"] == 0
    assert b.stats()["duplicates"] == 0
    assert paths["inline"] > 0  # both ways were taken
    assert paths["task"] > 0
    assert paths["inline"] + paths["task"] == 2_000


async def test_a_failure_in_the_reader_is_reported_and_the_reader_goes_on(
    backplanes: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("x") is True
    put = b._inbox.put
    failed: list[int] = []

    def put_once(msg: Any, sub: Any) -> bool:
        if not failed:
            failed.append(1)
            raise RuntimeError("delivery broke")
        return put(msg, sub)

    monkeypatch.setattr(b._inbox, "put", put_once)
    a.publish("x", 1)
    await eventually(lambda: bool(host_b.errors))
    assert "delivery broke" in str(host_b.errors[0])
    a.publish("x", 2)
    await eventually(lambda: [m for _, m, _ in host_b.deliveries] == [2])
    assert b.stats()["up"] == 1  # the connection lives on


async def test_a_queue_of_another_shape_is_left_alone(broker: Broker) -> None:
    """If nats-py's subscription queue is not the plain asyncio.Queue the link
    expects, it is kept, and messages reach the handler by nats-py's task."""
    client = await nats.connect(broker.url)
    try:
        wire = link.Link(client, broker.url, asyncio.Event())
        got: list[bytes] = []
        inline: list[Any] = []

        async def handler(msg: Any) -> None:
            got.append(msg.data)

        class Odd(asyncio.Queue):  # type: ignore[type-arg]
            pass

        with pytest.MonkeyPatch.context() as monkey:  # nats-py makes its queue in subscribe
            monkey.setattr(asyncio, "Queue", Odd)
            sub = await wire.subscribe("odd", "", handler, (100, 1 << 20), inline.append)
        assert type(sub._pending_queue) is Odd
        await client.flush()
        await client.publish("odd", b"1")
        await eventually(lambda: got == [b"1"])
        assert inline == []
    finally:
        await client.close()


async def test_a_closed_connections_subscriptions_need_no_garbage_collector(
    broker: Broker,
) -> None:
    """Handing on keeps no cycle through the subscription: once its connection is
    closed and forgotten, it goes with its last reference (thousands of them
    on each reconnect would otherwise wait for the collector)."""
    client = await nats.connect(broker.url)
    wire = link.Link(client, broker.url, asyncio.Event())

    async def handler(msg: Any) -> None:
        pass

    sub = await wire.subscribe("gone", "", handler, (100, 1 << 20), lambda msg: None)
    assert type(sub._pending_queue).__name__ == "_Handover"
    gone = weakref.ref(sub)
    await client.close()
    gc.collect()
    gc.disable()
    try:
        del sub, wire, client
        assert gone() is None
    finally:
        gc.enable()


def test_the_broker_socket_is_read_in_pieces_the_heap_can_give() -> None:
    """asyncio's plain transport allocates what it asks a read for (256 KiB: a fresh
    mapping of memory each read, in glibc): the link asks for ``READ_SIZE``;
    a transport that reads less already, or has no such knob, is left alone."""

    class Plain:
        max_size = 256 << 10

    class Small:
        max_size = 16 << 10

    plain, small, other = Plain(), Small(), object()
    for transport in (plain, small, other):
        link._read_less(transport)
    assert plain.max_size == link.READ_SIZE
    assert small.max_size == 16 << 10
    assert not hasattr(other, "max_size")


async def test_a_message_larger_than_a_read_arrives_whole(backplanes: Start) -> None:
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("big") is True
    await eventually(lambda: b.stats()["up"] == 1)
    assert b._link is not None
    assert b._link._direct is not None
    transport: Any = b._link._direct[0]
    if hasattr(type(transport), "max_size"):  # asyncio's own (uvloop's has none)
        assert transport.max_size == link.READ_SIZE
    big = "x" * (3 * link.READ_SIZE + 1)
    a.publish("big", big)
    await eventually(lambda: len(host_b.deliveries) == 1)
    assert host_b.deliveries == [("big", big, "a")]


async def test_a_servers_own_messages_back_from_the_broker_are_not_decoded(
    backplanes: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker hands a server its own publishes on topics it is subscribed to
    (worker groups need that): they are known by their first bytes and dropped."""
    taken: list[bytes] = []
    decoded: list[bytes] = []
    take = inbound.Inbound._take

    def counted_take(self: inbound.Inbound, subject: str, data: bytes) -> int:
        taken.append(data)
        return take(self, subject, data)

    def counted_read(data: bytes) -> Any:
        decoded.append(data)
        return read_publish(data)

    monkeypatch.setattr(inbound.Inbound, "_take", counted_take)
    monkeypatch.setattr(inbound, "read_publish", counted_read)
    a, host_a = await backplanes("a")
    assert await a.add_interest("own") is True
    a.publish("own", 1)
    await eventually(lambda: len(taken) == 1)  # back from the broker...
    assert decoded == []  # ...and dropped unread
    assert host_a.deliveries == []
