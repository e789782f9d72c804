"""What other servers can make a server hold, crossed: the server in a process of its own.

Anything that can publish in a namespace can claim to be any number of
servers: publish from made-up origins on many topics, beat for made-up
members, say goodbye for them, call a service and survey as often as it
likes. Each of those tables and waits is bounded before it is spent (streams
by ``max_streams``, members by ``MAX_MEMBERS``, calls and surveys run here by
``max_remote_calls``), and what each message costs the server must not grow
with what it holds. A raw nats-py connection floods a server in its own
process (``tests/bound_server.py`` with a backplane) while an honest client
pings it; the test watches the server's memory, tasks and tables. The same
shape for a flood over many topics (what the inbound queues hold together,
and a server behind the broker taken for neither dead nor alone), for a
client subscribing to many topics again and again, and for made-up answers
to a survey.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from boundkit import BoundServer, Bystander
from helpers import eventually
from ipc_server import IPCClient
from ipc_server.backplane.members import MAX_MEMBERS
from ipc_server.backplane.subjects import Subjects
from ipc_server.backplane.wire import BEAT, BYE, ERR, HELLO, Envelopes

from .broker import Broker
from .conftest import FAST, Spawn

pytestmark = pytest.mark.timeout(120)

TICK = os.sysconf("SC_CLK_TCK")

STREAMS = 10_000
"""``max_streams`` of the server under test."""
CALLS = 64
"""Its ``max_remote_calls``."""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def taken(stats: dict[str, Any]) -> int:
    """Broker messages the server took in on its topics: delivered, or dropped inbound."""
    held = stats["backplane"]
    return int(held["received"] + held["dropped_inbound"])


async def until(
    server: BoundServer, check: Any, what: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The server's stats, once ``check`` holds of them (polled; fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = await server.astats()
        if check(stats):
            return stats
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}: {stats}")
        await asyncio.sleep(0.02)


async def settled(server: BoundServer, count: int, quiet: float = 5.0) -> dict[str, Any]:
    """The server's stats once it took in ``count`` broker messages on its topics, or
    once it took in none for ``quiet`` seconds (a loaded machine only slows it down)."""
    loop = asyncio.get_running_loop()
    last, since = -1, loop.time()
    while True:
        stats = await server.astats()
        now, seen = loop.time(), taken(stats)
        if seen >= count or now - since > quiet:
            return stats
        if seen != last:
            last, since = seen, now
        await asyncio.sleep(0.1)


async def test_made_up_servers_hold_nothing_past_the_bounds(broker: Broker) -> None:
    """Made-up origins on twice STREAMS topics, 5,000 made-up members, 30,000 goodbyes and
    2,000 joins and leaves of one id, 2,000 surveys that wait a minute and
    2,000 calls that never end: each table stops at its bound, refused calls are answered at
    once, memory and tasks stay bounded, and the bystander is answered throughout."""
    options = {**FAST, "max_streams": STREAMS, "max_remote_calls": CALLS}
    config = {"url": broker.url, "namespace": "test", "options": options, "serve": "svc"}
    with BoundServer(backplane=config) as server:
        # A local subscriber to every topic the flood uses, whose survey answers never come.
        local = IPCClient(path=server.path)
        await local.connect()
        delivered: Counter[str] = Counter()
        local.on("t.*", lambda message, topic: delivered.update([message]))

        async def never(data: Any, respond: Any) -> None:
            await asyncio.Event().wait()

        local.on("request", never)
        assert await local.subscribe("t.*")
        raw = await nats.connect(broker.url, no_echo=True)  # what it hears is the server's
        answers: Counter[int] = Counter()
        from_server: list[int] = []

        async def answered(msg: Any) -> None:
            answers[msgpack.unpackb(msg.data)[1]] += 1

        async def heard(msg: Any) -> None:
            from_server.append(msgpack.unpackb(msg.data)[1])

        await raw.subscribe("ghost.>", cb=answered)
        await raw.subscribe(Subjects("test", "unknown").heartbeat, cb=heard)
        subjects = Subjects("test", "unknown")
        try:
            async with Bystander(server.path) as bystander:
                await eventually(lambda: bystander.count > 3, what="the bystander pings")
                before = await server.astats()

                # Streams: 200 made-up origins on twice STREAMS topics.
                origins = [Envelopes(f"ghost{n}") for n in range(200)]
                for n in range(2 * STREAMS):
                    envelopes = origins[n % 200]
                    body = [envelopes.body("x")]
                    await raw.publish(
                        subjects.topic(f"t.{n}"), envelopes.publish(1, 1, body, False, 0)
                    )
                await raw.flush()
                streams = await until(server, lambda s: taken(s) >= 2 * STREAMS, "the publishes")
                assert streams["streams"] == STREAMS
                assert taken(streams) == 2 * STREAMS

                # Goodbyes, and one made-up server that joins and leaves again and
                # again: each once went through every stream kept.
                spent = cpu_seconds(server.pid)
                beaten = len(from_server)
                flapper = Envelopes("flapper")
                for n in range(2000):
                    await raw.publish(subjects.heartbeat, flapper.heartbeat(HELLO, n, 1200.0, 1))
                    await raw.publish(subjects.heartbeat, flapper.heartbeat(BYE, n, 1200.0, 2))
                for n in range(30_000):
                    bye = Envelopes(f"nobody{n % 1000}").heartbeat(BYE, 1, 1.0, 2)
                    await raw.publish(subjects.heartbeat, bye)
                marker = Envelopes("marker")
                await raw.publish(subjects.heartbeat, marker.heartbeat(BEAT, 1, 1200.0, 1))
                beats = before["backplane"]["heartbeats"] + 2001
                await until(server, lambda s: s["backplane"]["heartbeats"] >= beats, "goodbyes")
                spent = cpu_seconds(server.pid) - spent
                beaten = len(from_server) - beaten
                # Members: 5,000 made-up servers that would beat for an hour.
                for n in range(5000):
                    beat = Envelopes(f"member{n}").heartbeat(BEAT, 1, 1200.0, 1)
                    await raw.publish(subjects.heartbeat, beat)
                full = MAX_MEMBERS + 1  # and itself
                await until(server, lambda s: s["backplane"]["members"] >= full, "the members")
                # Surveys that wait a minute (the local client never answers them),
                # then calls (which would never end): past max_remote_calls, a
                # survey is left to time out there, a call is refused at once.
                caller = Envelopes("caller")
                for n in range(2000):
                    await raw.publish(
                        subjects.survey, caller.request(60.0, n), reply=f"ghost.s.{n}"
                    )
                await until(server, lambda s: s["backplane"]["serving"] >= CALLS, "surveys")
                for n in range(2000):
                    await raw.publish(
                        subjects.service("svc"), caller.request(None, n), reply=f"ghost.c.{n}"
                    )
                end = Envelopes("the end")
                await raw.publish(
                    subjects.topic("t.end"), end.publish(1, 1, [end.body("end")], False, 0)
                )
                await raw.flush()
                await eventually(lambda: delivered["end"], timeout=30, what="the last publish")
                # Every call is answered at once: refused.
                await eventually(lambda: sum(answers.values()) >= 2000, what="answers")
                after = await server.astats()
                worst = bystander.worst
                assert bystander.failures == []
        finally:
            await raw.close()
            local.destroy()  # its survey handlers never end

    held = after["backplane"]
    assert after["streams"] == STREAMS  # nobody's goodbye forgot a stream
    assert held["members"] == MAX_MEMBERS + 1
    assert held["serving"] == CALLS
    assert held["surveys_answered"] == CALLS
    assert held["calls_served"] == 0
    assert answers == {ERR: 2000}
    grown = after["rss_mib"] - before["rss_mib"]
    tasks = after["tasks"] - before["tasks"]
    print(
        f"goodbyes {spent:.2f} s of CPU and {beaten} heartbeats sent, rss +{grown:.1f} MiB, tasks +{tasks}, "
        f"bystander worst {worst * 1e3:.0f} ms"
    )
    # 32,000 goodbyes: tens of microseconds each at most, whatever is kept; and
    # the hellos among them answered by a few heartbeats, not one each.
    assert spent < 2.0
    assert beaten < 100
    assert grown < 40, after
    assert tasks <= 3 * CALLS, after
    assert worst < 1.0


TOPICS = 2000
"""Topics (each a subscription of its own on the broker) the flood below spreads over."""
FLOOD = 200_000
"""Its broker messages: bursts of ``BURST`` to one topic, then the next."""
BURST = 3000
FLOODER = Path(__file__).with_name("flood.py")


async def test_a_flood_over_many_topics_is_taken_whole_and_queues_little(
    broker: Broker, peers: Spawn
) -> None:
    """Each topic a local client subscribes to is a broker subscription with a
    queue behind it, each bounded by ``inbound_limit`` (10,000 broker
    messages): 2,000 topics could hold 20 million. What they hold together
    stays small whatever the number of topics, because each turn of the loop
    reads at most one read's worth of messages and the drain delivers, at the
    next turn, all that queued (docs/reliability.md, "Across hosts"). A made-up
    server floods 2,000 topics in bursts as fast as nats-py can send, from a
    process of its own; the server's queues are sampled every 5 ms. The server
    falls seconds behind: the answers to its liveness PINGs wait behind the
    flood, and it must not take that for a dead connection (dropping it lost
    most of the flood); nor take the heartbeats of another server still
    waiting in the flood for missing ones (with 0.2 s heartbeats, that server
    went from the members table and came back several times)."""
    config = {"url": broker.url, "namespace": "test", "options": FAST}
    # The local client, in this process, may fall behind on a loaded machine: that is
    # the output's business (tests/test_bounds_output.py), not this test's.
    with BoundServer({"write_deadline": 120.0}, backplane=config) as server:
        local = IPCClient(path=server.path)
        await local.connect()
        delivered = [0]
        topics = [f"t.{n}" for n in range(TOPICS)]

        def count(message: Any) -> None:
            delivered[0] += 1

        for topic in topics:
            local.on(topic, count)
        for start in range(0, TOPICS, 1000):
            assert await local.subscribe(topics[start : start + 1000])
        await peers("member")  # beats every 0.2 s, from a process of its own
        await until(server, lambda s: s["members_most"] == 2, "the member known")
        try:
            async with Bystander(server.path) as bystander:
                await eventually(lambda: bystander.count > 3, what="the bystander pings")
                before = await server.astats()
                flooder = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(FLOODER),
                    broker.url,
                    "test",
                    *map(str, (TOPICS, FLOOD, BURST)),
                    stdout=asyncio.subprocess.PIPE,
                )
                assert flooder.stdout is not None
                done = await asyncio.wait_for(flooder.stdout.readline(), 60)
                assert done == b"done\n", done
                await flooder.wait()
                after = await settled(server, FLOOD)
                held = after["backplane"]
                got = (held["received"], held["reconnects"], held["gaps"])
                assert got == (FLOOD, 0, 0), f"{held} {after['errors']}"
                await eventually(lambda: delivered[0] >= FLOOD, timeout=60, what="deliveries")
                worst = bystander.worst
                assert bystander.failures == []
        finally:
            local.destroy()

    grown = after["peak_mib"] - before["rss_mib"]
    tasks = after["tasks"] - before["tasks"]
    print(
        f"{delivered[0]} of {FLOOD} delivered, queues held at most {after['queued_peak']} broker"
        f" messages ({after['queued_bytes_peak'] / 2**20:.2f} MiB), peak rss +{grown:.1f} MiB,"
        f" tasks +{tasks}, bystander worst {worst * 1e3:.0f} ms"
    )
    assert delivered[0] == FLOOD
    assert after["members_fewest"] == 2, after  # the member never went
    assert after["queued_peak"] > 2 * 256  # messages did queue past the reader's budget
    assert after["queued_peak"] < 20_000, after  # about one turn's reading (35,800 with a
    # task for each subscription, each taking 256 a turn)
    assert grown < 40, after
    assert tasks < 10, after
    assert worst < 1.0


CHURN = 10_000
"""Topics one client subscribes to and unsubscribes from at once, round after round."""


async def test_subscribing_many_topics_again_and_again_keeps_everyone_answered(
    broker: Broker,
) -> None:
    """A client subscribes to 10,000 topics in one request and unsubscribes from them
    in the next, five times: each is a subscription made and removed on the
    broker. Each request is answered, the broker connection stays up, the
    bystander is answered throughout, and nothing is left once they are gone.
    Before, the 10,000 were subscribed at once, each in a task of its own: the
    loop was held for half a second or more, the liveness probe took that
    for a dead broker, and the subscribes caught in nats-py's full queue of
    flush requests as it dropped the connection waited for ever (the
    request timed out)."""
    config = {"url": broker.url, "namespace": "test", "options": FAST}
    with BoundServer(backplane=config) as server:
        client = IPCClient(path=server.path)
        await client.connect()
        topics = [f"c.{n}" for n in range(CHURN)]
        try:
            async with Bystander(server.path) as bystander:
                await eventually(lambda: bystander.count > 3, what="the bystander pings")
                before = await server.astats()
                held: list[dict[str, Any]] = []
                for _ in range(5):
                    assert await client.subscribe(topics, timeout=15) is True
                    held.append(await server.astats())
                    assert await client.unsubscribe(topics, timeout=15) is True
                after = await until(
                    server,
                    lambda s: s["backplane"]["interests"] == 0 and s["tasks"] <= before["tasks"],
                    "every interest gone, and its tasks",
                )
                worst = bystander.worst
                assert bystander.failures == []
        finally:
            client.destroy()
    # What following a topic costs the server: no task, about a KiB.
    tasks = max(h["tasks"] for h in held) - before["tasks"]
    per_topic = (held[0]["rss_mib"] - before["rss_mib"]) * 2**20 / CHURN
    print(
        f"5 rounds of {CHURN} topics: tasks {before['tasks']} -> {after['tasks']}"
        f" (+{tasks} while subscribed), rss +{per_topic:.0f} B a topic,"
        f" bystander worst {worst * 1e3:.0f} ms"
    )
    assert tasks < 10
    assert per_topic < 3072
    assert after["backplane"]["reconnects"] == 0, after
    assert worst < 0.5


async def test_a_survey_keeps_no_more_answers_than_a_cluster_has_servers(broker: Broker) -> None:
    """Anything that can publish in the namespace can answer a survey it hears, as
    any number of made-up servers: a survey keeps the answers of at most
    ``MAX_MEMBERS`` servers (those it expects always), so 20,000 made-up ones
    leave it, and the server's memory, as they were; the survey returns at its
    timeout, naming the member that never answered."""
    config = {"url": broker.url, "namespace": "test", "options": FAST}
    with BoundServer(backplane=config) as server:
        raw = await nats.connect(broker.url, no_echo=True)
        subjects = Subjects("test", "unknown")
        replies: asyncio.Queue[str] = asyncio.Queue()

        async def heard(msg: Any) -> None:
            replies.put_nowait(msg.reply)

        await raw.subscribe(subjects.survey, cb=heard)
        await raw.flush()
        # A member that beats for an hour and never answers: the survey waits for it.
        silent = Envelopes("silent")
        await raw.publish(subjects.heartbeat, silent.heartbeat(BEAT, 1, 1200.0, 1))
        await until(server, lambda s: s["backplane"]["members"] == 2, "the member known")
        try:
            async with Bystander(server.path) as bystander:
                await eventually(lambda: bystander.count > 3, what="the bystander pings")
                before = await server.astats()
                asked = asyncio.ensure_future(IPCClient(path=server.control).connect())
                control = await asked
                slots = asyncio.ensure_future(control.request({"survey": 3.0}, timeout=30))
                reply = await asyncio.wait_for(replies.get(), 10)
                for n in range(20_000):
                    answer = Envelopes(f"ghost{n}").answers([f"from ghost {n}", "x" * 100])
                    await raw.publish(reply, answer)
                await raw.flush()
                during = await server.astats()
                got = await slots
                worst = bystander.worst
                assert bystander.failures == []
                await control.close()
        finally:
            await raw.close()
    grown = during["rss_mib"] - before["rss_mib"]
    print(f"survey slots {got}, rss +{grown:.1f} MiB, bystander worst {worst * 1e3:.0f} ms")
    # The bystander's slot (the one connection surveyed here), the silent member's (its
    # timeout), and the two of each made-up server kept: 40,002 without the bound.
    assert got == 2 + 2 * MAX_MEMBERS
    assert grown < 20, during
    assert worst < 1.0
