"""How a message arrives: handed on in nats-py's reader while nothing of its
subscription waits, else just behind it, by the connection's one drain; in
order and whole either way (``Link.subscribe``, ``handover``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import nats
import pytest

from helpers import eventually
from ipc_server.backplane import NatsBackplane, handover, inbound, link
from ipc_server.backplane.wire import Envelopes, read_publish

from .broker import Broker
from .conftest import Start


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many topic messages each way delivered: in the reader, by the drain."""
    counts = {"inline": 0, "drain": 0}
    now, taken = NatsBackplane._now, handover.Lane.taken

    def counted_now(self: NatsBackplane, sub: Any, msg: Any) -> None:
        counts["inline"] += 1
        now(self, sub, msg)

    def counted_taken(self: handover.Lane, msg: Any) -> None:
        counts["drain"] += 1
        counts["inline"] -= 1  # delivered by the same call
        taken(self, msg)

    monkeypatch.setattr(NatsBackplane, "_now", counted_now)
    monkeypatch.setattr(handover.Lane, "taken", counted_taken)
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
    assert paths == {"inline": 1, "drain": 0}


async def test_a_flood_past_the_turns_budget_queues_in_order(
    backplanes: Start, broker: Broker, paths: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``INLINE_BATCH`` in a turn messages queue; the next turn's wait behind
    them: every one delivered, once, in order, none counted missing."""
    monkeypatch.setattr(handover, "INLINE_BATCH", 8)
    b, host_b = await backplanes("b")
    assert await b.add_interest("flood") is True
    await _flood(broker.url, "test.t.flood", 2_000)
    await eventually(lambda: len(host_b.deliveries) == 2_000, timeout=20)
    assert [message[2] for _, message, _ in host_b.deliveries] == list(range(2_000))
    assert host_b.disorder == 0
    assert b.stats()["gaps"] == 0
    assert b.stats()["duplicates"] == 0
    assert paths["inline"] > 0  # both ways were taken
    assert paths["drain"] > 0
    assert paths["inline"] + paths["drain"] == 2_000


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
    expects, it is kept, and messages reach the handler through nats-py's
    public iterator, in a task."""
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
    assert type(sub._pending_queue) is handover.Lane
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


class _Sub:
    """What a lane asks of nats-py's ``Subscription``."""

    def __init__(self) -> None:
        self._closed = False
        self._pending_size = 0


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


def _lane(
    monkeypatch: pytest.MonkeyPatch, budget: int, limit: int = 100
) -> tuple[_Sub, handover.Lane, handover.Drain, list[bytes]]:
    monkeypatch.setattr(handover, "INLINE_BATCH", budget)
    sub, drain, got = _Sub(), handover.Drain(), []
    turn = handover.Turn(asyncio.get_running_loop())
    lane = handover.Lane(sub, lambda msg: got.append(msg.data), turn, drain, limit)  # type: ignore[arg-type]
    return sub, lane, drain, got


def _arrive(sub: _Sub, lane: handover.Lane, data: bytes) -> None:
    """What nats-py's reader does with a message (``Client._process_msg``)."""
    sub._pending_size += len(data)
    lane.put_nowait(_Msg(data))  # type: ignore[arg-type]


async def test_a_lane_hands_on_then_queues_in_order_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two handed on in the reader (the turn's budget), the rest queued behind them
    up to the lane's limit, past which nats-py is told the queue is full; the
    drain delivers them at the next turn, in order; then the budget is back."""
    sub, lane, drain, got = _lane(monkeypatch, budget=2, limit=3)
    for n in range(5):
        _arrive(sub, lane, b"%d" % n)
    assert got == [b"0", b"1"]
    assert (lane.qsize(), len(drain)) == (3, 3)
    with pytest.raises(asyncio.QueueFull):
        lane.put_nowait(_Msg(b"x"))  # type: ignore[arg-type]
    await eventually(lambda: lane.empty())
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert sub._pending_size == 0
    _arrive(sub, lane, b"5")
    assert got[-1] == b"5"  # nothing waits: handed on at once again


async def test_a_message_never_overtakes_its_subscriptions_queued_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With budget left in a turn, a message still queues while others of its
    subscription wait; another subscription's is handed on meanwhile."""
    sub, lane, drain, got = _lane(monkeypatch, budget=1)
    other_got: list[bytes] = []
    other_sub = _Sub()
    turn = handover.Turn(asyncio.get_running_loop())
    other = handover.Lane(other_sub, lambda m: other_got.append(m.data), turn, drain, 100)  # type: ignore[arg-type]
    _arrive(sub, lane, b"a")
    _arrive(sub, lane, b"b")  # past the budget: queued
    monkeypatch.setattr(handover, "INLINE_BATCH", 10)
    _arrive(sub, lane, b"c")  # budget again, but "b" waits: behind it
    _arrive(other_sub, other, b"x")
    assert got == [b"a"]
    assert other_got == [b"x"]
    await eventually(lambda: got == [b"a", b"b", b"c"])


async def test_what_waits_for_an_ended_subscription_or_connection_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-py's task for a subscription goes with it, and its queue with the task:
    a lane's queued messages are dropped once it is unsubscribed, and the drain's
    once its connection is closed."""
    sub, lane, _drain, got = _lane(monkeypatch, budget=0)
    _arrive(sub, lane, b"1")
    sub._closed = True
    await eventually(lambda: lane.empty())
    assert got == []
    sub2, lane2, drain2, got2 = _lane(monkeypatch, budget=0)
    _arrive(sub2, lane2, b"2")
    drain2.stop()
    assert len(drain2) == 0
    for _ in range(3):
        await asyncio.sleep(0)
    assert got2 == []
    assert not [t for t in asyncio.all_tasks() if "Drain" in repr(t)]


async def test_topics_followed_cost_no_task(backplanes: Start) -> None:
    """A topic's or a worker group's broker subscription has no task of its own
    (nats-py makes one per subscription with a callback)."""
    b, _ = await backplanes("b")
    before = len(asyncio.all_tasks())
    topics = [f"many.{n}" for n in range(500)]
    assert await b.add_interests(topics) == [True] * 500
    assert await b.add_interests(topics[:100], group="g") == [True] * 100
    assert len(asyncio.all_tasks()) <= before + 2
