"""IPCServers on several "hosts" (processes of their own) sharing one real broker, clients on each.

Every server here is ``host.py`` in its own process; the clients are this
process's, each connected to one server's socket, as an application's would
be on each host.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import eventually
from ipc_server import IPCClient, IPCError, NoRespondersError

from .broker import Broker
from .conftest import Peer, Spawn

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def clients(*hosts: Peer) -> AsyncIterator[list[IPCClient]]:
    """One connected client per host (in order), closed at the end."""
    made = [IPCClient(path=host.path) for host in hosts]
    try:
        for client in made:
            await client.connect()
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made), return_exceptions=True)


class Inbox:
    """What a client's listener of a pattern got: ``(topic, message)`` in order."""

    def __init__(self, client: IPCClient, pattern: str) -> None:
        self.got: list[tuple[str, Any]] = []
        client.on(pattern, self)

    def __call__(self, message: Any, topic: str | None = None) -> None:
        self.got.append((topic or "", message))

    def messages(self) -> list[Any]:
        return [m for _, m in self.got]


async def test_publish_and_wildcards_cross_hosts(hosts: Spawn) -> None:
    """A client's and a server's publish reach the matching subscribers of the other server."""
    a, b = await hosts("a"), await hosts("b")
    async with clients(a, b, b) as (ca, cb, cb2):
        news = Inbox(cb, "news.*")
        deep = Inbox(cb2, "orders.>")
        assert await cb.subscribe("news.*")
        assert await cb2.subscribe("orders.>")
        assert await ca.publish("news.eu", {"n": 1})
        assert await ca.publish("orders.eu.new", [1, 2])
        assert await ca.publish("weather.eu", "nobody")  # matches nothing
        await eventually(lambda: news.got and deep.got)
        assert news.got == [("news.eu", {"n": 1})]
        assert deep.got == [("orders.eu.new", [1, 2])]
        # The subscriber's own server does not deliver it twice.
        assert await cb2.publish("news.us", "local")
        await eventually(lambda: len(news.got) == 2)
        await asyncio.sleep(0.2)  # a second copy would have arrived by now
        assert news.got[1:] == [("news.us", "local")]


async def test_worker_groups_span_hosts(hosts: Spawn) -> None:
    """One member of a group spread over two servers gets each message; plain ones get all."""
    a, b = await hosts("a"), await hosts("b")
    async with clients(a, a, b, b, b) as (pub, wa, wb1, wb2, watcher):
        members = {name: Inbox(c, "jobs.*") for name, c in (("a", wa), ("b1", wb1), ("b2", wb2))}
        for c in (wa, wb1, wb2):
            assert await c.subscribe("jobs.*", group="workers")
        plain = Inbox(watcher, "jobs.>")
        assert await watcher.subscribe("jobs.>")
        count = 60
        for i in range(count):
            assert await pub.publish("jobs.x", i)
        await eventually(lambda: len(plain.got) == count)
        await eventually(lambda: sum(len(m.got) for m in members.values()) >= count)
        await asyncio.sleep(0.2)
        taken = sorted(i for m in members.values() for i in m.messages())
        assert taken == list(range(count)), "each message once in the group"
        assert members["a"].got, "the publisher's server takes some"
        assert members["b1"].got or members["b2"].got, "the other server takes some"


async def test_calls_cross_hosts(hosts: Spawn) -> None:
    """call() reaches a worker on another server; nobody anywhere is NoRespondersError at once."""
    a, b = await hosts("a"), await hosts("b")
    async with clients(a, b) as (caller, worker):

        async def add(data: Any, respond: Any) -> None:
            await respond(data + 1)

        assert await worker.serve("math.add", add)
        assert await caller.call("math.add", 41) == 42
        began = time.monotonic()
        with pytest.raises(NoRespondersError):
            await caller.call("math.none", 1, timeout=5)
        assert time.monotonic() - began < 0.5


async def test_subscribe_then_publish_race(hosts: Spawn) -> None:
    """subscribe() is true once the broker has the interest: a publish right after, from
    another server, is delivered (1,000 of 1,000)."""
    a, b = await hosts("a"), await hosts("b")
    async with clients(a, b) as (pub, sub):
        got: list[int] = []
        count = 1000

        async def one(i: int) -> None:
            sub.on(f"race.{i}", got.append)
            assert await sub.subscribe(f"race.{i}")
            assert await pub.publish(f"race.{i}", i)

        for start in range(0, count, 50):
            await asyncio.gather(*(one(i) for i in range(start, start + 50)))
        await eventually(lambda: len(got) >= count, timeout=10)
        assert sorted(got) == list(range(count))


async def test_three_servers_sequenced(hosts: Spawn) -> None:
    """3 servers x 3 topics: every client gets every message once, in order per publisher.

    100,000 messages per server, each server publishing as fast as its outbox
    takes them (300,000 in all, 900,000 deliveries): nothing is dropped, no
    gap is reported.
    """
    servers = [await hosts(name) for name in ("a", "b", "c")]
    topics = ["seq.t0", "seq.t1", "seq.t2"]
    per_server = 100_000
    async with clients(*servers) as cs:
        inboxes = [Inbox(c, "seq.>") for c in cs]
        for c in cs:
            assert await c.subscribe("seq.>")
        await asyncio.gather(
            *(
                s.ask("publish", topics=topics, count=per_server, rate=0, timeout=60)
                for s in servers
            )
        )
        total = 3 * per_server
        await eventually(lambda: all(len(i.got) >= total for i in inboxes), timeout=30)
        await asyncio.sleep(0.2)
        for inbox in inboxes:
            assert len(inbox.got) == total
            seen: Counter[tuple[str, str, int]] = Counter()
            last: dict[tuple[str, str], int] = {}
            for topic, (origin, _, i) in inbox.got:
                seen[(origin, topic, i)] += 1
                assert i > last.get((origin, topic), -1), "FIFO per publisher and topic"
                last[(origin, topic)] = i
            assert max(seen.values()) == 1, "no duplicates"
    for s in servers:
        report = await s.ask("report")
        assert report["stats"]["gaps"] == 0
        assert report["stats"]["dropped"] == 0


async def test_broker_killed_mid_stream(hosts: Spawn, broker: Broker) -> None:
    """SIGKILL of the broker mid-stream, restarted on the same port: local subscribers get
    everything, the other server gets each message or counts it in a gap, delivery resumes,
    and the outbox stays within its bound."""
    bound = 64 * 1024
    a = await hosts("a", outbox_bytes=bound)
    b = await hosts("b")
    async with clients(a, a, b) as (local, _, remote):
        near, far = Inbox(local, "s.>"), Inbox(remote, "s.>")
        assert await local.subscribe("s.>")
        assert await remote.subscribe("s.>")
        count, rate = 6000, 2000
        stream = asyncio.ensure_future(a.ask("publish", topics=["s.x"], count=count, rate=rate))
        await eventually(lambda: len(far.got) > 500)
        broker.kill()
        await eventually(lambda: len(near.got) > 2500)  # a second on, the broker still down
        broker.start()
        await stream
        await eventually(lambda: len(near.got) == count)
        assert [i for _, (_, _, i) in near.got] == list(range(count)), "local: all, in order"

        async def settled() -> bool:
            report = await b.ask("report")
            got = report["stats"]["received"] + sum(report["missed"].values())
            return bool(got == count)

        deadline = time.monotonic() + 15
        while not await settled():
            if time.monotonic() > deadline:
                raise AssertionError(f"received + gaps != sent: {await b.ask('report')}")
            await asyncio.sleep(0.05)
        sent = await a.ask("report")
        received = [i for _, (_, _, i) in far.got]
        assert received == sorted(set(received)), "no duplicates, in order"
        assert received[-1] == count - 1, "delivery resumed after the restart"
        assert sent["stats"]["queued_bytes_peak"] <= bound
        assert sent["stats"]["reconnects"] >= 1
        kinds = [kind for kind, _ in sent["events"]]
        assert "down" in kinds
        assert kinds[-1] == "up"


async def test_worker_server_killed_mid_call(hosts: Spawn) -> None:
    """The server of the worker that took a call dies: the call fails as soon as it is
    known gone (its heartbeat stops), well before its timeout."""
    a, b = await hosts("a"), await hosts("b")
    async with clients(a, b) as (caller, worker):
        started = asyncio.Event()

        async def hold(data: Any, respond: Any) -> None:
            started.set()
            await asyncio.Event().wait()

        assert await worker.serve("slow", hold)
        call = asyncio.ensure_future(caller.call("slow", 1, timeout=20))
        await asyncio.wait_for(started.wait(), 5)
        began = time.monotonic()
        b.kill()
        with pytest.raises(IPCError, match="left"):
            await call
        assert time.monotonic() - began < 3


async def test_cluster_survey_names_the_missing_server(hosts: Spawn) -> None:
    """A cluster survey waits for the servers known by heartbeat; one SIGKILLed is a
    RequestTimeoutError naming it in its slot, at the survey's timeout."""
    slow = {"heartbeat": 1.0}  # expires after 3 s: the survey's timeout comes first
    a, b, c = await hosts("a", **slow), await hosts("b", **slow), await hosts("c", **slow)
    async with clients(a, b, c) as cs:
        for client in cs:
            client.on("request", lambda data, respond: respond(f"{data}!"))
        await a.ask("members", least=3)
        answers = await a.ask("survey", data="q", seconds=2, scope="cluster")
        assert isinstance(answers, list), answers
        assert sorted(who for who, _ in answers) == sorted(["local", b.server_id, c.server_id])
        assert all(answer == "q!" for _, answer in answers)
        c.kill()
        began = time.monotonic()
        answers = await a.ask("survey", data="q", seconds=1, scope="cluster")
        assert 0.9 < time.monotonic() - began < 2.0
        slots = dict(answers)
        assert slots[b.server_id] == "q!"
        assert slots[c.server_id]["error"] == "RequestTimeoutError"
        assert c.server_id in slots[c.server_id]["text"]
        # Local surveys stay local.
        assert len(await a.ask("survey", data="q", seconds=1)) == 1


async def test_namespaces_are_isolated(hosts: Spawn) -> None:
    """Two namespaces on one broker share nothing."""
    a, b = await hosts("a", namespace="one"), await hosts("b", namespace="two")
    c = await hosts("c", namespace="two")
    async with clients(a, b, c) as (ca, cb, cc):
        inbox = Inbox(cb, "t")
        assert await cb.subscribe("t")
        assert await ca.publish("t", "other namespace")
        assert await cc.publish("t", "same namespace")
        await eventually(lambda: inbox.got)
        await asyncio.sleep(0.2)
        assert inbox.messages() == ["same namespace"]
