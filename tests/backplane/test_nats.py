"""NatsBackplane against a real broker, the backplanes in this process (one connection each)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from helpers import eventually
from ipc_server import MessageTooLargeError, NoRespondersError, RemoteError, RequestTimeoutError
from ipc_server.backplane import NatsBackplane
from ipc_server.backplane.subjects import MAX_SUBJECT_BYTES

from .broker import Broker, free_port
from .conftest import FAST, Start
from .peer import FakeHost

Pair = tuple[NatsBackplane, FakeHost, NatsBackplane, FakeHost]


@contextlib.asynccontextmanager
async def pair(broker: Broker, users: bool = False) -> AsyncIterator[Pair]:
    """Backplanes ``a`` and ``b`` started on ``broker`` (started here, stopped after),
    with their hosts; with ``users``, as the users of ``_TWO_USERS``."""
    broker.start()
    made: list[NatsBackplane] = []
    hosts: list[FakeHost] = []
    try:
        for name in ("a", "b"):
            options: dict[str, Any] = {"user": name, "password": f"p{name}"} if users else {}
            made.append(NatsBackplane(servers=[broker.url], namespace="test", **options, **FAST))
            hosts.append(FakeHost(name))
            await made[-1].start(hosts[-1])
        yield made[0], hosts[0], made[1], hosts[1]
    finally:
        for backplane in made:
            await backplane.close()
        broker.stop()


async def test_publish_reaches_the_other_server_only(backplanes: Start) -> None:
    """A publish reaches every other server with a matching interest, never its own."""
    a, host_a = await backplanes("a")
    b, host_b = await backplanes("b")
    c, host_c = await backplanes("c")
    for backplane in (a, b):
        assert await backplane.add_interest("news") is True
    a.publish("news", "from a")
    c.publish("news", "from c")
    await eventually(lambda: len(host_b.deliveries) == 2)
    await eventually(lambda: len(host_a.deliveries) == 1)
    assert sorted(host_b.deliveries) == [("news", "from a", "a"), ("news", "from c", "c")]
    assert host_a.deliveries == [("news", "from c", "c")]
    assert host_c.deliveries == []
    assert a.stats()["published"] == 1
    assert b.stats()["received"] == 2


async def test_messages_keep_their_types(backplanes: Start) -> None:
    """What msgpack carries crosses as it was: falsy values, bytes, nesting, aware datetimes."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    await b.add_interest("t")
    when = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    values: list[Any] = [
        None,
        False,
        0,
        "",
        [],
        {},
        b"\x00\xff",
        {"a": [1, 2.5, {"b": None}]},
        2**64 - 1,
    ]
    values.append(when)
    for value in values:
        a.publish("t", value)
    await eventually(lambda: len(host.deliveries) == len(values))
    assert [message for _, message, _ in host.deliveries] == values
    assert host.missed == {}


async def test_what_msgpack_cannot_carry_is_reported_not_sent(backplanes: Start) -> None:
    """An object msgpack cannot encode is reported, not sent, and leaves no gap behind."""
    a, host_a = await backplanes("a")
    b, host_b = await backplanes("b")
    await b.add_interest("t")
    a.publish("t", 1)
    a.publish("t", object())
    a.publish("t", 2**64)  # beyond 64 bits
    a.publish("t", 3)
    await eventually(lambda: len(host_b.deliveries) == 2)
    assert [m for _, m, _ in host_b.deliveries] == [1, 3]
    assert host_b.missed == {}
    assert len(host_a.errors) == 2
    assert a.stats()["refused"] == 2
    assert "cannot cross hosts" in str(host_a.errors[0])


async def test_wildcards_cross_hosts(backplanes: Start) -> None:
    """``*`` matches one token and ``>`` the rest, across hosts, for odd tokens too."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    assert await b.add_interest("user.*.events")
    assert await b.add_interest("log.>")
    for topic in (
        "user.42.events",
        "user.jöhn doe.events",  # an opaque token still matches "*"
        "user.42.other",
        "user.1.2.events",
        "log.a",
        "log.a.b.c",
        "log",
        "log..x",  # an empty token
    ):
        a.publish(topic, topic)
    expected = {"user.42.events", "user.jöhn doe.events", "log.a", "log.a.b.c", "log..x"}
    await eventually(lambda: len(host.deliveries) == len(expected))
    await asyncio.sleep(0.1)
    assert set(host.topics()) == expected
    assert all(topic == message for topic, message, _ in host.deliveries)


async def test_one_delivery_however_many_patterns_match(backplanes: Start) -> None:
    """Three matching interests on one server: each message reaches it once, in order."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    for pattern in ("x.y", "x.*", "x.>", ">"):
        await b.add_interest(pattern)
    for i in range(200):
        a.publish("x.y", ["a", 0, i])
    await eventually(lambda: len(host.deliveries) == 200)
    await asyncio.sleep(0.1)
    assert len(host.deliveries) == 200
    assert host.disorder == 0
    assert b.stats()["duplicates"] == 600
    assert host.missed == {}


async def test_odd_topics_round_trip(backplanes: Start) -> None:
    """Topics with spaces, non-ASCII, '~', '*' inside a word and empty tokens arrive as sent."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    topics = ["a b", "ünï.cödé", "~x", "a*b.c>", ".lead", "trail.", "", "a..b", "tab\there"]
    for topic in topics:
        assert await b.add_interest(topic)
    for topic in topics:
        a.publish(topic, topic)
    await eventually(lambda: len(host.deliveries) == len(topics))
    assert sorted(host.topics()) == sorted(topics)
    assert all(topic == message for topic, message, _ in host.deliveries)


async def test_namespaces_are_isolated(backplanes: Start) -> None:
    """Two namespaces on one broker share nothing: topics, services, members."""
    a, _ = await backplanes("a", namespace="one")
    b, host_b = await backplanes("b", namespace="two")
    c, host_c = await backplanes("c", namespace="one")
    for backplane in (b, c):
        await backplane.add_interest(">")
    await b.add_service("svc")
    a.publish("t", 1)
    await eventually(lambda: len(host_c.deliveries) == 1)
    await asyncio.sleep(0.2)
    assert host_b.deliveries == []
    with pytest.raises(NoRespondersError):
        await a.call("svc", 1, 2)
    assert sorted(a.members()) == ["a", "c"]
    assert b.members() == ["b"]


async def test_too_long_topics_are_refused(backplanes: Start) -> None:
    """A topic whose subject passes the broker's line limit is refused; one just under crosses."""
    a, host_a = await backplanes("a")
    b, host_b = await backplanes("b")
    room = MAX_SUBJECT_BYTES - len("test.t.")
    fits, too_long = "x" * room, "x" * (room + 1)
    assert await b.add_interest(fits)
    with pytest.raises(ValueError, match="max_control_line"):
        await b.add_interest(too_long)
    a.publish(fits, "ok")
    a.publish(too_long, "no")
    await eventually(lambda: len(host_b.deliveries) == 1)
    assert host_b.deliveries[0][0] == fits
    assert len(host_a.errors) == 1
    assert "max_control_line" in str(host_a.errors[0])


async def test_publish_to_a_wildcard_is_refused(backplanes: Start) -> None:
    """A wildcard topic is a pattern: publishing to it is reported and sends nothing."""
    a, host = await backplanes("a")
    a.publish("a.*", 1)
    a.publish("a.>", 1)
    assert [type(e) for e in host.errors] == [ValueError, ValueError]
    assert a.stats()["refused"] == 2


async def test_oversize_is_reported_and_not_sent(tmp_path: Path) -> None:
    """Past the broker's max_payload a publish is reported, not sent, and leaves no gap."""
    async with pair(Broker(tmp_path, "max_payload: 4096")) as (a, host_a, b, host_b):
        await b.add_interest("t")
        a.publish("t", "x" * 3000)
        a.publish("t", "x" * 5000)
        a.publish("t", "end")
        await eventually(lambda: len(host_b.deliveries) == 2)
        assert [len(m) for _, m, _ in host_b.deliveries] == [3000, 3]
        assert host_b.missed == {}
        (error,) = host_a.errors
        assert isinstance(error, MessageTooLargeError)
        assert error.option == "max_payload"
        assert error.limit == 4096


async def test_a_broker_that_takes_less_refuses_not_redials(tmp_path: Path) -> None:
    """A message queued while the broker was down, too big for the broker that comes back
    (a smaller max_payload): refused and reported when the outbox flushes, the connection
    kept (no redial loop), and the receiver sees the hole."""
    broker = Broker(tmp_path)
    async with pair(broker) as (a, host_a, b, host_b):
        assert await b.add_interest("t")
        a.publish("t", "first")
        await eventually(lambda: len(host_b.deliveries) == 1)
        broker.kill()
        await eventually(lambda: not a.is_up)
        a.publish("t", "x" * 10_000)  # fits the broker that was
        broker.config = "max_payload: 4096"
        broker.start()
        await eventually(lambda: a.is_up and b.is_up, timeout=5)
        await eventually(lambda: a.stats()["refused"] == 1)
        assert any("payload" in str(error).lower() for error in host_a.errors)
        a.publish("t", "after")
        await eventually(lambda: host_b.deliveries[-1] == ("t", "after", "a"), timeout=3)
        assert host_b.missed["a"] == 1
        assert a.stats()["reconnects"] == 1


async def test_subscribe_then_publish_race(backplanes: Start) -> None:
    """add_interest() is True only once the broker has it: 1,000 of 1,000 publishes right after arrive."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    for i in range(1000):
        assert await b.add_interest(f"race.{i}")
        a.publish(f"race.{i}", i)
    await eventually(lambda: len(host.deliveries) == 1000, timeout=10)
    assert sorted(m for _, m, _ in host.deliveries) == list(range(1000))


async def test_unsubscribed_topic_is_not_a_gap(backplanes: Start) -> None:
    """Messages published while this server had no interest are not reported as lost."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    await b.add_interest("t")
    a.publish("t", 1)
    await eventually(lambda: len(host.deliveries) == 1)
    await b.remove_interest("t")
    for i in range(5):
        a.publish("t", i)
    await asyncio.sleep(0.2)
    await b.add_interest("t")
    a.publish("t", "back")
    await eventually(lambda: len(host.deliveries) == 2)
    assert host.missed == {}
    assert b.stats()["gaps"] == 0


async def test_topics_subscribed_again_while_leaving_stay(backplanes: Start) -> None:
    """Many topics leave the broker a batch at a time; subscribed again meanwhile,
    each is a new interest that stays (what leaves is the old one), and an
    oversize pattern among them is skipped, as it was never shared."""
    a, _ = await backplanes("a")
    b, host = await backplanes("b")
    topics = [f"again.{i}" for i in range(500)]
    assert await b.add_interests(topics) == [True] * 500
    leaving = asyncio.ensure_future(b.remove_interests([*topics, "x" * MAX_SUBJECT_BYTES]))
    await asyncio.sleep(0)  # it has begun, and yields every 64
    assert not leaving.done()
    assert await b.add_interests(topics) == [True] * 500
    await leaving
    assert b.stats()["interests"] == 500
    for i, topic in enumerate(topics):
        a.publish(topic, i)
    await eventually(lambda: len(host.deliveries) == 500, timeout=10)
    assert sorted(m for _, m, _ in host.deliveries) == list(range(500))


async def test_start_without_broker_then_up(tmp_path: Path) -> None:
    """No broker: start() returns after connect_timeout, down; all works once the broker comes."""
    broker = Broker(tmp_path)
    backplane = NatsBackplane(
        servers=[broker.url], namespace="test", **{**FAST, "connect_timeout": 0.5}
    )
    host = FakeHost("a")
    other = NatsBackplane(servers=[broker.url], namespace="test", **FAST)
    other_host = FakeHost("b")
    try:
        began = time.monotonic()
        await backplane.start(host)
        assert 0.4 < time.monotonic() - began < 1.5
        assert not backplane.is_up
        assert host.kinds() == ["down"]
        assert "cannot reach the broker" in host.events[0][1]["reason"]
        began = time.monotonic()
        assert await backplane.add_interest("t") is True
        with pytest.raises(NoRespondersError, match="unreachable"):
            await backplane.call("svc", 1, 5)
        assert time.monotonic() - began < 0.1
        backplane.publish("t", "queued while down")
        broker.start()
        await eventually(lambda: backplane.is_up, timeout=5)
        assert host.kinds() == ["down", "up"]
        await other.start(other_host)
        await other.add_interest("t")
        other.publish("t", "to a")
        await eventually(lambda: host.deliveries == [("t", "to a", "b")])
    finally:
        await backplane.close()
        await other.close()
        broker.stop()


async def heartbeats_after(backplane: NatsBackplane, count: int = 2) -> None:
    """Wait until ``backplane`` has heard ``count`` more heartbeats from others: its
    confirmed interests are then known to predate what they publish next."""
    heard = backplane.stats()["heartbeats"]
    await eventually(lambda: backplane.stats()["heartbeats"] >= heard + count, timeout=3)


async def test_outbox_flushes_on_reconnect(tmp_path: Path) -> None:
    """What was published while down is sent once the connection is back, then "up";
    if it reached the broker before the receiver was back, the loss is reported,
    even for the very first messages of a stream."""
    broker = Broker(tmp_path)
    async with pair(broker) as (a, host_a, b, host_b):
        assert await b.add_interest("t")
        await heartbeats_after(b)
        broker.kill()
        await eventually(lambda: not a.is_up and not b.is_up)
        a.publish("t", "while down")  # the stream's first message
        assert a.stats()["queued"] == 1
        broker.start()
        await eventually(lambda: a.is_up and b.is_up, timeout=5)
        assert a.stats()["queued"] == 0
        assert a.stats()["published"] == 1
        # The two reconnect on their own: a's flush may reach the broker
        # before b is back, and is then lost, but never silently.
        a.publish("t", "after")
        await eventually(lambda: len(host_b.deliveries) + host_b.missed["a"] == 2, timeout=3)
        assert host_b.deliveries[-1] == ("t", "after", "a")
        assert host_a.kinds() == ["up", "down", "up"]


async def test_a_streams_first_messages_lost_are_reported(tmp_path: Path) -> None:
    """The broker drops this server's subscription (a permissions reload) before another
    server's first publishes to the topic: once delivery resumes, every message is
    either received or reported missed, the first ones included."""
    broker = Broker(tmp_path, _TWO_USERS.format(deny=""))
    async with pair(broker, users=True) as (a, _, b, host_b):
        assert await b.add_interest("x")
        await heartbeats_after(b)
        broker.reload(
            _TWO_USERS.format(deny=', permissions: { subscribe: { deny: ["test.t.>"] } }')
        )
        await eventually(lambda: host_b.errors, timeout=5)
        sent = 0
        for _ in range(5):  # lost for certain: b has no subscription at the broker
            a.publish("x", sent)
            sent += 1
        await eventually(lambda: a.stats()["published"] == sent)
        broker.reload(_TWO_USERS.format(deny=""))
        began = time.monotonic()
        while not host_b.deliveries:
            assert time.monotonic() - began < 5, "delivery never resumed"
            a.publish("x", sent)
            sent += 1
            await asyncio.sleep(0.05)
        await eventually(lambda: len(host_b.deliveries) + host_b.missed["a"] == sent)
        assert host_b.missed["a"] >= 5
        assert b.stats()["missed"] == host_b.missed["a"]


async def test_services_one_worker_per_call(backplanes: Start) -> None:
    """A call goes to exactly one worker of the queue group, across servers."""
    caller, _ = await backplanes("caller")
    w1, host1 = await backplanes("w1")
    w2, host2 = await backplanes("w2")
    await w1.add_service("math.add")
    await w2.add_service("math.add")
    answers = await asyncio.gather(*(caller.call("math.add", i, 5) for i in range(40)))
    assert [a["echo"] for a in answers] == list(range(40))
    assert len(host1.calls) + len(host2.calls) == 40
    assert sorted(d for _, d in host1.calls + host2.calls) == list(range(40))
    assert {a["by"] for a in answers} <= {"w1", "w2"}


async def test_call_errors(backplanes: Start) -> None:
    """No worker anywhere: NoRespondersError at once; a failing worker: RemoteError; slow: timeout."""
    caller, _ = await backplanes("caller")
    worker, host = await backplanes("worker")
    began = time.monotonic()
    with pytest.raises(NoRespondersError, match="on any server"):
        await caller.call("none", 1, 10)
    assert time.monotonic() - began < 0.5
    await worker.add_service("svc")
    host.fail = True
    with pytest.raises(RemoteError) as raised:
        await caller.call("svc", "x", 5)
    assert raised.value.type == "ValueError"
    assert "refused 'x'" in raised.value.message
    host.fail, host.hold = False, True
    began = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="taken by server 'worker'"):
        await caller.call("svc", "slow", 0.3)
    assert 0.25 < time.monotonic() - began < 1.0
    # The timed-out caller cancels the handler on the worker.
    await eventually(lambda: worker.stats()["calls_served"] == 2 and not _running(worker))
    await worker.remove_service("svc")
    with pytest.raises(NoRespondersError):
        await caller.call("svc", 1, 5)


def _running(backplane: NatsBackplane) -> bool:
    return backplane.stats()["up"] == 1 and bool(_serving(backplane))


def _serving(backplane: NatsBackplane) -> int:
    # How many calls from other servers run here (through the public stats).
    return backplane.stats()["serving"]


async def test_cluster_survey(backplanes: Start) -> None:
    """A cluster survey gets each other member's answers, in its slot; alone, [] at once."""
    alone, _ = await backplanes("alone", namespace="solo")
    began = time.monotonic()
    assert await alone.survey("q", 5) == []
    assert time.monotonic() - began < 0.5
    a, _ = await backplanes("a")
    _b, _ = await backplanes("b")
    _c, _ = await backplanes("c")
    await eventually(lambda: len(a.members()) == 3)
    slots = await a.survey("q", 5)
    assert sorted(slots) == [("b", ["b:q"]), ("c", ["c:q"])]


async def test_members_by_heartbeat(backplanes: Start) -> None:
    """Members are seen by heartbeat and leave on close at once."""
    a, _ = await backplanes("a")
    b, _ = await backplanes("b")
    await eventually(lambda: a.members() == ["a", "b"] and b.members() == ["b", "a"])
    await b.close()
    await eventually(lambda: a.members() == ["a"], timeout=0.5)


async def test_stats_counters(backplanes: Start) -> None:
    """stats() holds the issue's counters and the outbox's, as ints."""
    a, _ = await backplanes("a")
    stats = a.stats()
    for name in ("published", "received", "dropped", "gaps", "reconnects", "missed", "queued"):
        assert isinstance(stats[name], int)


async def test_unreachable_port_is_down_not_an_error(tmp_path: Path) -> None:
    """Nothing listening: start() returns down; close() returns promptly."""
    backplane = NatsBackplane(
        servers=[f"nats://127.0.0.1:{free_port()}"],
        namespace="t",
        **{**FAST, "connect_timeout": 0.3},
    )
    host = FakeHost("a")
    await backplane.start(host)
    assert host.kinds() == ["down"]
    assert backplane.members() == ["a"]
    assert await backplane.survey(1, 1) == []
    began = time.monotonic()
    await backplane.close()
    assert time.monotonic() - began < 1.0


_TWO_USERS = 'authorization {{ users = [ {{ user: "a", password: "pa" }}, {{ user: "b", password: "pb"{deny} }} ] }}'


async def test_deaf_subscription_is_detected_and_recovered(tmp_path: Path) -> None:
    """The broker drops a subscription while the connection lives (a permissions reload):
    reported once, subscribed again until it holds, and delivery resumes."""
    broker = Broker(tmp_path, _TWO_USERS.format(deny=""))
    async with pair(broker, users=True) as (a, _, b, host_b):
        assert await b.add_interest("x")
        a.publish("x", 0)
        await eventually(lambda: len(host_b.deliveries) == 1)
        broker.reload(
            _TWO_USERS.format(deny=', permissions: { subscribe: { deny: ["test.t.>"] } }')
        )
        await eventually(lambda: host_b.errors, timeout=5)
        assert "removed this server's subscription to 'test.t.x'" in str(host_b.errors[0])
        broker.reload(_TWO_USERS.format(deny=""))
        began = time.monotonic()
        i = 1
        while len(host_b.deliveries) < 2:
            assert time.monotonic() - began < 5, "delivery never resumed"
            a.publish("x", i)
            i += 1
            await asyncio.sleep(0.05)
        await eventually(lambda: b.stats()["resubscribed"] == 1)
        assert len(host_b.errors) <= 2, "one report per episode (two if a retry raced the reload)"


_FENCED = """authorization { users = [
  { user: "app", password: "pw", permissions: {
      publish: { allow: ["app.>"] }, subscribe: { allow: ["app.>"] } } }
] }"""


async def test_permissions_fence_a_namespace(tmp_path: Path) -> None:
    """The permissions docs/backplane.md shows are all namespace "app" needs; another
    namespace under them is refused by the broker and told on error."""
    broker = Broker(tmp_path, _FENCED)
    broker.start()
    made: list[NatsBackplane] = []
    try:

        async def start(name: str, namespace: str) -> tuple[NatsBackplane, FakeHost]:
            backplane = NatsBackplane(
                servers=[broker.url], namespace=namespace, user="app", password="pw", **FAST
            )
            host = FakeHost(name)
            made.append(backplane)
            await backplane.start(host)
            return backplane, host

        a, _ = await start("a", "app")
        b, host_b = await start("b", "app")
        assert await b.add_interest("t.>")
        await b.add_service("svc")
        a.publish("t.x", 1)
        await eventually(lambda: host_b.deliveries == [("t.x", 1, "a")])
        assert (await a.call("svc", 2, 5))["echo"] == 2
        assert [server for server, _ in await a.survey("q", 2)] == ["b"]
        assert not host_b.errors
        _, host_c = await start("c", "other")
        await eventually(lambda: host_c.errors, timeout=5)
        assert "permissions violation" in str(host_c.errors[0]).lower()
    finally:
        for backplane in made:
            await backplane.close()
        broker.stop()


async def test_a_new_server_is_answered_at_once(backplanes: Start) -> None:
    """A server that starts says hello, and the others answer with a heartbeat at once,
    not at their next one (a minute apart here); hellos that come one after the other
    are each answered (answers to a flood of them are spaced, never dropped)."""
    await backplanes("a", heartbeat=60.0)
    for name in ("b", "c", "d"):
        new, _ = await backplanes(name, heartbeat=60.0)
        await eventually(partial(knows, new, "a"), timeout=2, what=f"{name} knows a")


def knows(backplane: NatsBackplane, server: str) -> bool:
    return server in backplane.members()
