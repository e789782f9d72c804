"""How a message leaves: at once when nothing waits ahead of it, else with the outbox,
in order either way (``backplane.sender``, ``Link.publish_now``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from typing import Any

import nats
import pytest

from helpers import eventually
from ipc_server.backplane.link import Link
from ipc_server.backplane.wire import read_publish

from .broker import Broker
from .conftest import Start


class _Client:
    """A stand-in for nats-py's client: its publish waits on ``gate`` when one is set."""

    _max_pending_size = 2 << 20  # nats-py's default bound of its buffer
    pending_data_size = 0

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.gate: asyncio.Future[None] | None = None
        self.fail: Exception | None = None

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.sent.append((subject, payload))
        if self.gate is not None:
            await self.gate
        if self.fail is not None:
            raise self.fail


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP): ``/proc`` on Linux, else ``ps``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        shown = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True
        )
        return shown.stdout.strip().startswith("T")


def _link(client: _Client) -> Link:
    return Link(client, "nats://test", asyncio.Event())  # type: ignore[arg-type]


async def _watch(url: str, subject: str, cb: Any) -> Any:
    """A raw nats-py subscriber to ``subject``, its SUB surely at the broker."""
    watcher = await nats.connect(url)
    await watcher.subscribe(subject, cb=cb)
    # nats-py's flush may write its PING ahead of the SUB still in its buffer
    await eventually(lambda: watcher.pending_data_size == 0)
    await watcher.flush()
    return watcher


async def _fresh_link(backplane: Any) -> Link:
    """``backplane``'s link once it is up, at a fresh turn of the loop."""
    await eventually(lambda: backplane.stats()["up"] == 1)
    await asyncio.sleep(0)
    link = backplane._link
    assert isinstance(link, Link)
    return link


async def test_publish_now_finishes_at_once_when_nats_py_does_not_wait() -> None:
    client = _Client()
    assert _link(client).publish_now("s", b"x") is None
    assert client.sent == [("s", b"x")]


async def test_publish_now_hands_back_the_rest_when_nats_py_waits() -> None:
    loop = asyncio.get_running_loop()
    client = _Client()
    client.gate = loop.create_future()
    rest = _link(client).publish_now("s", b"x")
    assert rest is not None
    assert client.sent == [("s", b"x")]
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting, as nats-py would
    client.gate.set_result(None)
    await asyncio.wait_for(task, 2)


async def test_publish_now_raises_what_nats_py_raises() -> None:
    client = _Client()
    client.fail = ConnectionError("gone")
    with pytest.raises(ConnectionError):
        _link(client).publish_now("s", b"x")
    client.gate = asyncio.get_running_loop().create_future()
    rest = _link(client).publish_now("s", b"y")
    assert rest is not None
    client.gate.set_result(None)
    with pytest.raises(ConnectionError):
        await rest


async def test_cancelled_rest_cancels_what_it_waits_for() -> None:
    client = _Client()
    gate = client.gate = asyncio.get_running_loop().create_future()
    rest = _link(client).publish_now("s", b"x")
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.cancelled()


class _TimedClient(_Client):
    """A stand-in whose publish waits under ``asyncio.timeout`` and gives up quietly,
    as nats-py's does past its buffer's bound (its ``flush_timeout``)."""

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.sent.append((subject, payload))
        if sys.version_info >= (3, 11):  # the tests that use it are skipped before
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await asyncio.get_running_loop().create_future()


needs_timeout = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.timeout is Python 3.11+"
)


@needs_timeout
async def test_a_publish_past_nats_py_bound_is_not_begun_in_the_callers_task() -> None:
    """asyncio.timeout binds to the task that enters it: begun in the caller, nats-py's
    wait past its bound would cancel the caller at its deadline."""
    client = _TimedClient()
    client.pending_data_size = client._max_pending_size - 10
    rest = _link(client).publish_now("s", b"x")
    assert rest is not None
    assert client.sent == []  # not begun here
    await asyncio.wait_for(asyncio.ensure_future(rest), 2)
    assert client.sent == [("s", b"x")]
    await asyncio.sleep(0.1)  # past the stand-in's deadline: this task goes on


@needs_timeout
async def test_the_rest_lets_its_coroutine_handle_its_own_timeout() -> None:
    """A wait under asyncio.timeout met while the rest runs: the timeout's cancellation
    goes into the publish, which handles it; the task finishing it is not cancelled."""
    client = _TimedClient()
    client.pending_data_size = client._max_pending_size  # begun by the finishing task
    rest = _link(client).publish_now("s", b"x")
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.wait_for(asyncio.shield(task), 2)
    assert not task.cancelled()
    assert client.sent == [("s", b"x")]


async def test_first_message_leaves_at_once_the_rest_as_one_run(
    backplanes: Start, broker: Broker
) -> None:
    """A lone publish is on the socket when ``publish`` returns (no task hop);
    a burst in the same turn follows it in one envelope; order holds across both."""
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("burst") is True
    envelopes: list[Any] = []

    async def seen(msg: Any) -> None:
        envelopes.append(read_publish(msg.data))

    watcher = await _watch(broker.url, "test.t.burst", seen)
    try:
        link = await _fresh_link(a)
        before = link.client.stats["out_msgs"]
        a.publish("burst", 0)
        assert link.client.stats["out_msgs"] == before + 1  # handed over already...
        assert link.client.pending_data_size == 0  # ...past nats-py's buffer, to the socket
        for i in range(1, 100):
            a.publish("burst", i)
        await eventually(lambda: len(host_b.deliveries) == 100)
        assert [message for _, message, _ in host_b.deliveries] == list(range(100))
        await eventually(lambda: sum(len(e.messages) for e in envelopes) == 100)
        assert [len(e.messages) for e in envelopes] == [1, 99]
        assert [e.seq for e in envelopes] == [1, 2]
        assert a.stats()["published"] == 100
    finally:
        await watcher.close()


async def test_a_late_pong_leaves_the_connection_listening(
    backplanes: Start, broker: Broker
) -> None:
    """A PING given up on while the broker stalls, answered once it resumes, does not
    stop nats-py's reader: the server goes on hearing (before, the late PONG broke
    the reader, and the connection stayed deaf: nats-py's flush then returns at
    once without a PING, so the liveness probe never saw it)."""
    a, _ = await backplanes("a", ping_interval=30.0)
    b, host_b = await backplanes("b", ping_interval=30.0)
    assert await b.add_interest("late") is True
    link, process = b._link, broker.process
    assert link is not None
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: _stopped(process.pid), what="the broker stopped")
        assert await link.probe(0.2) is False  # not answered in time
    finally:
        process.send_signal(signal.SIGCONT)
    a.publish("late", 1)
    await eventually(lambda: len(host_b.deliveries) == 1, timeout=5.0)
    assert await link.probe(5.0) is True
    assert b.stats()["reconnects"] == 0


class _Behind:
    """A stand-in for nats-py's client whose PING is never answered; while
    ``hearing``, a message arrives each 10 ms (nats-py's ``stats``)."""

    is_connected = True

    def __init__(self, hearing: bool) -> None:
        self.stats = {"in_msgs": 0}
        self._pings_outstanding = 2
        self.hearing = hearing

    async def flush(self, timeout: float) -> None:
        while True:
            await asyncio.sleep(0.01)
            if self.hearing:
                self.stats["in_msgs"] += 1

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("hearing", [False, True])
async def test_a_probe_waits_longer_only_while_messages_come(hearing: bool) -> None:
    """An unanswered probe fails after its timeout when nothing arrives; while
    messages keep arriving (its answer is behind them) it waits up to ``behind``,
    and nats-py's own count of unanswered PINGs starts over meanwhile."""
    client = _Behind(hearing)
    link = Link(client, "nats://test", asyncio.Event())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await link.probe(0.2, behind=1.0) is False
    waited = loop.time() - began
    if hearing:
        assert 1.0 <= waited < 1.5
        assert client._pings_outstanding == 0
    else:
        assert 0.2 <= waited < 0.5
        assert client._pings_outstanding == 2
    client.hearing = True
    began = loop.time()
    assert await link.probe(0.2) is False  # no patience asked for: the timeout alone
    assert loop.time() - began < 0.5
    await link.close(timeout=0.1)


async def test_a_connection_that_stops_reading_is_dropped(backplanes: Start) -> None:
    """A connection whose reader is gone has its PINGs "answered" by nats-py's
    flush (it returns at once then); nats-py's own PINGs every ``ping_interval``
    go unanswered, and after two the connection is dropped and made again:
    delivery resumes."""
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("deaf") is True
    link = b._link
    assert link is not None
    reader = link.client._reading_task
    assert reader is not None
    reader.cancel()  # the reader is gone; the socket stays open
    await eventually(lambda: b.stats()["reconnects"] == 1 and b.is_up, timeout=10.0)

    def heard() -> bool:
        a.publish("deaf", "again")
        return len(host_b.deliveries) > 0

    await eventually(heard, timeout=5.0)


async def test_a_publish_waiting_on_a_full_buffer_does_not_outlive_its_connection(
    backplanes: Start, broker: Broker
) -> None:
    """The broker stops reading (SIGSTOP) while megabytes are published: nats-py's
    buffer fills and a publish waits for its writer; the connection is dropped
    (no PONG) and the broker killed and restarted: the sender goes on, and a
    publish after the reconnection is delivered (before, the sender waited on
    the dead connection's writer for ever and nothing left again)."""
    a, _ = await backplanes("a")
    b, host_b = await backplanes("b")
    assert await b.add_interest("big") is True
    process = broker.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        chunk = "x" * (256 << 10)
        for _ in range(64):  # 16 MiB: past the socket buffers and nats-py's 2 MiB
            a.publish("big", chunk)
            await asyncio.sleep(0)
        await eventually(lambda: not a.is_up, timeout=10.0, what="a's connection dropped")
    finally:
        process.send_signal(signal.SIGCONT)
    broker.restart()
    await eventually(lambda: a.is_up and b.is_up, timeout=15.0)

    def heard() -> bool:
        a.publish("big", "after")
        return any(message == "after" for _, message, _ in host_b.deliveries)

    await eventually(heard, timeout=10.0)


async def test_a_publish_goes_behind_what_nats_py_still_holds(
    backplanes: Start, broker: Broker
) -> None:
    """Written to the socket at once only when nats-py has nothing unsent: else it
    goes through nats-py's buffer, behind what waits there, in order."""
    a, _ = await backplanes("a")
    subjects: list[str] = []

    async def seen(msg: Any) -> None:
        subjects.append(msg.subject)

    watcher = await _watch(broker.url, "test.t.>", seen)
    try:
        link = await _fresh_link(a)
        await link.client.publish("test.t.first", b"x")  # waits in nats-py's buffer
        assert link.client.pending_data_size > 0
        a.publish("second", 1)
        assert link.client.pending_data_size > len(b"PUB test.t.first  1\r\nx\r\n")  # behind it
        await eventually(lambda: len(subjects) == 2)
        assert subjects == ["test.t.first", "test.t.second"]
    finally:
        await watcher.close()
