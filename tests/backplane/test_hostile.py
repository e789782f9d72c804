"""What a server reads from the broker that no server of ours sent.

Anything that can publish in a namespace (a buggy peer, an older release, a
process holding the namespace's credentials) can put any bytes on the
subjects a server listens to. Each such message must be dropped and
reported, without a task, a timer or a member held because of it, and
everything well-formed must go on as before. A raw nats-py connection
throws seeded hostile messages at every subject of one server; then real
traffic between two servers is checked, and what the first one holds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from helpers import eventually
from ipc_server import IPCClient, IPCError, IPCServer
from ipc_server.backplane import NatsBackplane
from ipc_server.backplane.members import EXPIRY, MAX_MEMBERS, Members, ReadClock
from ipc_server.backplane.subjects import Subjects
from ipc_server.backplane.wire import ACK, ANSWERS, BEAT, ERR, HELLO, OK, Envelopes

from .broker import Broker
from .conftest import FAST

pytestmark = pytest.mark.timeout(90)

ODD: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63,
    -(2**63),
    2**64 - 1,
    0.5,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    "",
    "x" * 300,
    "ghost",
    b"\x00\xff",
    [],
    {},
    [1, 2],
    {"a": [None]},
    msgpack.ExtType(42, b"\x01"),
)
"""Values that no field of an envelope expects all of."""


TEMPLATES: dict[str, Callable[[random.Random], list[Any]]] = {
    "publish": lambda rng: [1, "ghost", rng.randrange(1, 9), rng.randrange(1, 9), ["hi"], False, 0],
    # each heartbeat from a server of its own, so that a later one never renews a bad one
    "heartbeat": lambda rng: [1, rng.choice([BEAT, HELLO]), f"ghost{rng.random()}", 1, 0.2, 1],
    "request": lambda rng: [1, "ghost", rng.choice([None, 1.0]), {"q": 1}],
    "answer": lambda rng: [1, rng.choice([ACK, OK, ERR, ANSWERS]), "ghost", [[True, 1]], "text"],
    "cancel": lambda rng: [1, "test.r.ghost.1"],
}
"""Well-formed envelopes of each kind, as another server of ours would send them."""


def sweep() -> Iterator[tuple[str, bytes]]:
    """``(kind, message)``: each well-formed envelope with each field in turn replaced by
    each odd value."""
    rng = random.Random(0)
    for kind, template in TEMPLATES.items():
        for field in range(1, len(template(rng))):
            for value in ODD:
                items = template(rng)
                items[field] = value
                yield kind, msgpack.packb(items, use_bin_type=True)


def hostile(rng: random.Random) -> tuple[str, bytes]:
    """``(kind, message)``: one message no server of ours sends (or, rarely, one it could).

    Mostly a well-formed envelope with one field (sometimes two) replaced by an
    odd value, so that each check behind the first is reached; also bytes
    changed or cut short, random bytes, and lists of any length and version."""
    kind = rng.choice(list(TEMPLATES))
    items = TEMPLATES[kind](rng)
    roll = rng.random()
    if roll < 0.6:
        for _ in range(rng.choice([1, 1, 1, 2])):
            items[rng.randrange(1, len(items))] = rng.choice(ODD)
        return kind, msgpack.packb(items, use_bin_type=True)
    if roll < 0.8:
        data = bytearray(msgpack.packb(items, use_bin_type=True))
        if rng.random() < 0.5:
            return kind, bytes(data[: rng.randrange(len(data))])
        data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)
    if roll < 0.9:
        return kind, rng.randbytes(rng.randrange(0, 48))
    items = [rng.choice([1, 1, 0, 2, *ODD]), *(rng.choice(ODD) for _ in range(rng.randrange(8)))]
    return kind, msgpack.packb(items, use_bin_type=True)


def record_timers(loop: asyncio.AbstractEventLoop) -> list[float]:
    """The time of every timer set on ``loop`` from now on (``call_later`` and
    ``asyncio.timeout`` go through ``call_at``); undone by ``del loop.call_at``.

    A timer set for NaN breaks the order of asyncio's heap of timers (those
    behind it can wait for later ones); uvloop refuses it with ValueError."""
    whens: list[float] = []
    call_at = loop.call_at

    def recording(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        whens.append(when)
        return call_at(when, callback, *args, context=context)

    loop.call_at = recording  # type: ignore[method-assign,assignment]
    return whens


async def test_hostile_messages_are_dropped_and_reported(broker: Broker, tmp_path: Path) -> None:
    """Every odd field of every envelope, and 3,000 broken messages, at every subject of
    server a: each dropped and reported, nothing held, and a and b still work together."""
    folder = Path(tmp_path)
    errors: list[BaseException] = []
    escaped: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    whens = record_timers(loop)

    def backplane() -> NatsBackplane:
        return NatsBackplane(servers=[broker.url], namespace="test", **FAST)

    a = IPCServer(path=str(folder / "a"), backplane=backplane())
    b = IPCServer(path=str(folder / "b"), backplane=backplane())
    a.on("error", lambda error, *where: errors.append(error))
    await a.start()
    await b.start()
    clients: list[IPCClient] = []
    raw: Any = None
    try:

        async def connect(name: str) -> IPCClient:
            made = IPCClient(path=str(folder / name))
            await made.connect()
            clients.append(made)
            return made

        # What a listens to on the broker: a topic, a wildcard, a worker group,
        # a service, broadcasts, surveys, heartbeats, its replies and cancels.
        subscriber, worker = await connect("a"), await connect("a")
        got: list[Any] = []
        subscriber.on("ping", got.append)
        subscriber.on("news.*", lambda message, topic: None)
        assert await subscriber.subscribe(["ping", "news.*"])
        subscriber.on("request", lambda data, respond: respond("here"))  # surveys end at once
        assert await worker.serve("work", lambda request, respond: respond(["done", request]))
        await eventually(lambda: b.server_id in a.backplane.members(), what="a sees b")  # type: ignore[union-attr]

        subjects = Subjects("test", a.server_id)
        by_kind = {
            "publish": [
                subjects.topic("ping"),
                subjects.topic("news.sport"),
                subjects.topic_prefix + "news.~~",  # a token the topic map cannot read back
                subjects.broadcast,
            ],
            "heartbeat": [subjects.heartbeat],
            "request": [subjects.survey, subjects.service("work")],
            "answer": [subjects.reply(1), subjects.reply(10**30), subjects.reply("x")],
            "cancel": [subjects.reply("k")],
        }
        everywhere = [subject for subjects_of in by_kind.values() for subject in subjects_of]
        raw = await nats.connect(broker.url)
        rng = random.Random(7)
        envelopes = Envelopes("ghost")
        sent = 3000
        replies = (f"test.r.ghost.{n}" for n in itertools.count())  # one request, one reply
        for kind, data in sweep():
            for subject in by_kind[kind]:
                await raw.publish(subject, data, reply=next(replies))
        for _ in range(sent):
            kind, data = hostile(rng)
            subject = rng.choice(by_kind[kind] if rng.random() < 0.7 else everywhere)
            await raw.publish(subject, data, reply="" if rng.random() < 0.2 else next(replies))
        # Last, a well-formed publish from the same connection: once a delivers
        # it, a has read everything before it.
        await raw.publish(
            subjects.topic("ping"), envelopes.publish(10**6, 1, [envelopes.body("last")], False, 0)
        )
        await raw.flush()
        await eventually(lambda: "last" in got, timeout=10, what="the last raw publish delivered")
        stats = a.stats()["backplane"]
        assert stats["malformed"] > sent // 2
        assert stats["surveys_answered"] + stats["calls_served"] > 0  # they got that far too

        # No call or survey of the ghost's is left running here.
        await eventually(lambda: a.stats()["backplane"]["serving"] == 0, what="nothing serving")
        # Real traffic still goes both ways.
        await b.publish("ping", "after")
        await eventually(lambda: "after" in got, what="a publish from b delivered")
        assert await b.call("work", 1, timeout=5) == ["done", 1]
        # Members: a and b among them; every one a server id, and every one
        # expires (the table itself: nothing public says when each does).
        members = a.backplane.members()  # type: ignore[union-attr]
        assert {a.server_id, b.server_id} <= set(members)
        assert all(isinstance(member, str) for member in members)
        table = a.backplane._cluster.members  # type: ignore[union-attr]
        table.expire(loop.time() + EXPIRY * 3600 + 1)
        assert table.others() == [], "members whose heartbeat never expires"
        # Nothing escaped to the loop; no timer was set for NaN or forever.
        assert escaped == []
        assert whens
        assert all(math.isfinite(at) for at in whens), [at for at in whens if not math.isfinite(at)]
        # What a reported: malformed messages, or a hostile message it could not deliver.
        assert errors
        for error in errors:
            assert isinstance(error, (IPCError, TypeError, ValueError)), repr(error)
    finally:
        if raw is not None:
            await raw.close()
        for made in clients:
            await made.close()
        await b.close()
        await a.close()
        loop.set_exception_handler(None)
        del loop.call_at


async def test_gaps_are_each_counted_and_emitted_but_logged_a_few_at_a_time(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher that numbers its messages with a hole before each (a real loss can
    look the same: a slow consumer's drops): every gap is counted and emitted on the
    ``backplane`` event, and the warning log says a few of them, then how many it
    held back, not one line per message."""
    caplog.set_level(logging.WARNING, logger="ipc_server")
    server = IPCServer(
        path=str(tmp_path / "s"), backplane=NatsBackplane(servers=[broker.url], namespace="test")
    )
    gaps: list[dict[str, Any]] = []
    server.on("backplane", lambda kind, info: gaps.append(info) if kind == "gap" else None)
    await server.start()
    raw: Any = None
    client = IPCClient(path=str(tmp_path / "s"))
    try:
        await client.connect()
        got: list[Any] = []
        client.on("ping", got.append)
        assert await client.subscribe("ping")
        raw = await nats.connect(broker.url)
        envelopes = Envelopes("ghost")
        subject = Subjects("test", server.server_id).topic("ping")
        for n in range(501):  # numbers 1, 3, 5, ...: a hole of one before each but the first
            await raw.publish(
                subject, envelopes.publish(1, 2 * n + 1, [envelopes.body(n)], False, 0)
            )
        await raw.flush()
        await eventually(lambda: len(got) == 501, timeout=10, what="every message delivered")
        assert len(gaps) == 500
        assert server.stats()["backplane"]["gaps"] == 500
        lines = [r.getMessage() for r in caplog.records if "messages from server" in r.getMessage()]
        assert 1 <= len(lines) <= 6, lines  # Throttle(): 5 at once, then one per 10 s
    finally:
        if raw is not None:
            await raw.close()
        await client.close()
        await server.close()


def test_the_generator_covers_every_shape() -> None:
    """The seeded messages include every kind, whole and broken, so the test above can fail
    on each of the checks a server makes."""
    rng = random.Random(7)
    kinds: set[str] = set()
    heads: set[bytes] = set()
    for _ in range(3000):
        kind, data = hostile(rng)
        kinds.add(kind)
        heads.add(data[:2])
    assert kinds == set(TEMPLATES)
    assert len(heads) > 20


# ---------------------------------------------------------------- what a heartbeat must say


@pytest.mark.parametrize("interval", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_a_heartbeat_interval_that_is_not_a_positive_number_is_refused(interval: float) -> None:
    members = Members("me")
    with pytest.raises(ValueError, match="interval"):
        members.beat("ghost", 1, interval, 100.0)
    assert members.others() == []


def test_intervals_are_taken_between_10_ms_and_an_hour() -> None:
    members = Members("me")
    assert members.beat("slow", 1, 1e9, 100.0) == "new"
    assert members.beat("fast", 1, 1e-9, 100.0) == "new"
    assert members.expire(100.0 + EXPIRY * 0.01 + 0.001) == ["fast"]
    assert members.expire(100.0 + EXPIRY * 3600 - 1) == []
    assert members.expire(100.0 + EXPIRY * 3600 + 1) == ["slow"]


def test_the_members_table_is_bounded() -> None:
    """Past MAX_MEMBERS others, a new server id is refused; those known still beat."""
    members = Members("me")
    for n in range(MAX_MEMBERS):
        assert members.beat(f"s{n}", 1, 1.0, 0.0) == "new"
    with pytest.raises(ValueError, match="members already"):
        members.beat("one more", 1, 1.0, 0.0)
    assert "one more" not in members
    assert members.beat("s0", 2, 1.0, 1.0) == "changed"
    assert members.leave("s1")
    assert members.beat("one more", 1, 1.0, 1.0) == "new"
    assert len(members.others()) == MAX_MEMBERS


def test_silence_is_measured_on_the_clock_of_what_was_read() -> None:
    """A member is silent only while this server reads: while its own heartbeats come
    back late (a burst ahead of them), the clock of membership waits for them."""
    clock = ReadClock(100.0, 1.0)
    members = Members("me")
    members.beat("m", 1, 1.0, clock.at(100.0))
    for beat in range(1, 4):  # on time: the clock is the wall's
        clock.sent(beat, 100.0 + beat)
        clock.came_back(beat)
    assert clock.at(103.5) == 103.5
    assert members.expire(clock.at(103.5)) == ["m"]  # three intervals without one
    members.beat("m", 1, 1.0, clock.at(104.0))
    for beat in range(4, 10):  # sent, not back yet: this server is behind
        clock.sent(beat, 100.0 + beat)
    assert clock.at(110.0) == 105.0  # two intervals past the last that came back (at 103)
    assert members.expire(clock.at(110.0)) == []
    clock.came_back(6)  # read up to what the broker had at 106 (4 and 5 are not coming)
    assert clock.at(110.0) == 108.0
    clock.came_back(5)  # too late to count: forgotten
    assert clock.at(110.0) == 108.0
    assert members.expire(clock.at(110.0)) == ["m"]  # silent 104 to 108 in what was read
    clock.restart(200.0)
    assert clock.at(201.5) == 201.5
    assert clock.at(203.0) == 202.0
