"""Bounds on what requests can make a server hold: handlers in flight, parked work,
requests after END, ids, topics, packets waiting for authentication (SPEC section 7)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from boundkit import BoundServer, Bystander, flood, raw_packet, raw_peer, wait_for
from helpers import POSIX_ONLY, wait_until, within
from ipc_server import ConnectionClosedError, IPCClient, IPCConnection, IPCServer, Respond
from ipc_server.packets import END, REQUEST, RESPONSE
from ipc_server.protocol import FrameDecoder

pytestmark = POSIX_ONLY


def read_packets(
    sock: socket.socket, decoder: FrameDecoder, until: Any, timeout: float = 10.0
) -> list[Any]:
    """Read JSON packets from ``sock`` until ``until(packets)`` is true."""
    packets: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(packets):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(1 << 16)
        if not data:
            break
        packets.extend(json.loads(bytes(body)) for body in decoder.feed(data))
        if time.monotonic() > deadline:
            raise AssertionError(f"not there within {timeout} s: {packets[-3:]}")
    return packets


def requests(count: int, payload: Any = "x", start: int = 0) -> bytes:
    return b"".join(raw_packet(REQUEST, payload, str(start + i)) for i in range(count))


async def test_handlers_in_flight_are_bounded_and_end_with_their_peer() -> None:
    """20,000 requests to a handler that never answers: at most max_concurrent_requests run."""
    with BoundServer({"keepalive_interval": 0.5}, handler="never") as server:
        base = (await server.astats())["tasks"]
        sock = raw_peer(server.path)
        try:
            sent = await asyncio.to_thread(flood, sock, requests(1000), 3.0)
            assert sent >= 1  # the server reads the first ones, then holds
            async with Bystander(server.path) as bystander:
                stats = await server.astats()
                deadline = time.monotonic() + 10
                while stats["tasks"] < base + 256 and time.monotonic() < deadline:
                    stats = await server.astats()
                assert stats["tasks"] <= base + 256 + 4, stats["tasks"]
                assert stats["rss_mib"] < 100, stats
                assert await bystander.check() < 1.0
            assert bystander.worst < 1.0
            assert not bystander.failures
        finally:
            sock.close()
        # Their peer gone, the handlers are cancelled (cancel_on_disconnect).
        deadline = time.monotonic() + 10
        while (await server.astats())["tasks"] > base + 2:
            assert time.monotonic() < deadline, "the handlers outlived their client"


async def test_a_peer_that_does_not_read_cannot_make_the_server_park_work() -> None:
    """A client that never reads its answers: the server stops reading it, holding little."""
    with BoundServer(handler="echo") as server:
        base = await server.astats()
        sock = raw_peer(server.path)
        payload = "y" * 10_000
        try:
            async with Bystander(server.path) as bystander:
                # Until the server stops reading it (its own answers unread).
                sent = await asyncio.to_thread(flood, sock, requests(10, payload), 10.0)
                assert sent >= 1
                stats = await server.astats()
                assert stats["tasks"] <= base["tasks"] + 4, stats["tasks"]
                assert stats["rss_mib"] < base["rss_mib"] + 64, (base, stats)
                assert stats["connections"] == 2  # backpressure, not a disconnect
                assert await bystander.check() < 1.0
            assert bystander.worst < 1.0
            # Once it reads, it gets every answer, in order.
            decoder = FrameDecoder()
            answers = read_packets(
                sock, decoder, lambda got: sum(p["t"] == RESPONSE for p in got) >= 10 * sent, 20
            )
            nonces = [p["n"] for p in answers if p["t"] == RESPONSE]
            assert nonces[: 10 * sent] == [str(i % 10) for i in range(10 * sent)]
        finally:
            sock.close()


async def test_no_request_runs_after_the_server_sent_end(path: str) -> None:
    """Requests that reach a closing connection after its END are not run (nor answered)."""
    runs: list[Any] = []
    server = IPCServer(path=path)

    async def slow(request: Any, respond: Respond, connection: IPCConnection) -> None:
        runs.append(request)
        await asyncio.sleep(0.2)
        await respond(request)

    server.on("request", slow)
    await server.start()
    try:
        sock = await asyncio.to_thread(raw_peer, path)
        decoder = FrameDecoder()
        sock.sendall(raw_packet(REQUEST, "before", "1"))
        await within(asyncio.to_thread(wait_for, lambda: runs, "the first request to run"))
        closing = asyncio.ensure_future(server.connections[0].close("bye"))
        # Sent while the server waits for its handler: not run, even though no END came yet.
        await asyncio.sleep(0)
        sock.sendall(raw_packet(REQUEST, "during", "2"))
        packets = await asyncio.to_thread(
            read_packets, sock, decoder, lambda got: any(p["t"] == END for p in got)
        )
        sock.sendall(raw_packet(REQUEST, "after", "3"))  # after END: not run either
        sock.close()  # the close ends once the server has read all of it (it waits for the peer)
        await within(closing)
        assert [p["t"] for p in packets] == [RESPONSE, END]
        assert runs == ["before"]
    finally:
        await server.close()


async def test_a_final_end_fails_unanswered_requests_as_not_run(path: str) -> None:
    """After the server's END without reconnect, what it did not answer fails with executed=False."""
    server = IPCServer(path=path)
    server.on("request", lambda request, respond, conn: respond(request))
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        # Sent, but the connection closes before the server reads it.
        connection = server.connections[0]
        connection.pause()
        pending = asyncio.ensure_future(client.request("late", timeout=5))
        await asyncio.sleep(0.05)
        await within(connection.close("going away"))
        with pytest.raises(ConnectionClosedError) as caught:
            await within(pending)
        assert caught.value.executed is False
    finally:
        client.destroy()
        await server.close()


def test_a_live_id_is_not_given_to_a_newcomer_and_long_ids_are_refused(path: str) -> None:
    """Claiming a live client's id, or a 10,000-character one, gets a fresh id of the server's."""

    async def main() -> None:
        server = IPCServer(path=path)
        await server.start()
        try:
            first = await asyncio.to_thread(raw_peer, path, None, client_id="same", admitted=False)
            second = await asyncio.to_thread(raw_peer, path, None, client_id="same", admitted=False)
            long = await asyncio.to_thread(
                raw_peer, path, None, client_id="x" * 10_000, admitted=False
            )
            answers = []
            for sock in (first, second, long):
                got = await asyncio.to_thread(
                    read_packets, sock, FrameDecoder(1 << 21), lambda p: bool(p)
                )
                answers.append(got[0]["d"]["id"])
            assert answers[0] == "same"
            assert answers[1] != "same"
            assert len(answers[2]) <= 128
            assert sorted(c.id for c in server.connections) == sorted(answers)
            for sock in (first, second, long):
                sock.close()
        finally:
            await server.close()

    asyncio.run(main())


async def test_topics_per_connection_and_topic_length_are_bounded(path: str) -> None:
    """Subscribing past max_topics_per_connection or max_topic_length answers false; the connection stays."""
    server = IPCServer(path=path, max_topics_per_connection=100, max_topic_length=50)
    errors: list[BaseException] = []
    server.on("error", lambda error, connection: errors.append(error))
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        assert await client.subscribe([f"t{i}" for i in range(100)])
        assert await client.subscribe("t5")  # already there: still 100
        assert not await client.subscribe("one-more")
        assert "max_topics_per_connection=100" in str(errors[-1])
        assert not await client.subscribe(["fine", "z" * 51])
        assert "max_topic_length=50" in str(errors[-1])
        assert len(server.topics) == 100
        assert not await client.subscribe([f"u{i}" for i in range(10_000)])
        assert await client.request("still here") is None
    finally:
        await client.close()
        await server.close()


async def test_packets_pipelined_behind_connection_wait_for_authenticate(path: str) -> None:
    """A request sent right behind CONNECTION is answered once the async authenticate admits."""

    async def authenticate(payload: Any, connection: IPCConnection) -> bool:
        await asyncio.sleep(0.1)
        return bool(payload == "ok")

    server = IPCServer(path=path, authenticate=authenticate)
    server.on("request", lambda request, respond, connection: respond(["echo", request]))
    await server.start()
    try:
        sock = await asyncio.to_thread(raw_peer, path, "ok", admitted=False)
        sock.sendall(raw_packet(REQUEST, "right behind", "7"))
        packets = await asyncio.to_thread(
            read_packets, sock, FrameDecoder(), lambda got: len(got) >= 2
        )
        assert packets[0]["t"] == 0  # the CONNECTION answer
        assert packets[1] == {"t": RESPONSE, "d": ["echo", "right behind"], "n": "7"}
        sock.close()
    finally:
        await server.close()


async def test_a_stopped_client_is_dropped_by_keepalive() -> None:
    """A client process stopped with SIGSTOP is closed after two unanswered pings, its slot freed."""
    import signal
    import subprocess
    import sys

    with BoundServer({"keepalive_interval": 0.3, "max_connections": 5}) as server:
        child = subprocess.Popen(  # noqa: ASYNC220 - a child to stop, not to wait for
            [
                sys.executable,
                "-c",
                "import importlib.util, sys, time;"
                "importlib.util.find_spec('ipc_server') or sys.path.insert(0, 'src');"
                "from ipc_server.sync import IPCClient;"
                f"c = IPCClient(path={server.path!r}).connect(); print('up', flush=True);"
                "time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "up"
            assert (await server.astats())["connections"] == 1
            child.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            deadline = started + 10
            while (stats := await server.astats())["connections"]:
                assert time.monotonic() < deadline, "the stopped client was never dropped"
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            assert 0.6 <= elapsed < 3.0, elapsed  # three intervals, give or take a tick
            assert any("keepalive timeout" in e for e in stats["errors"])
        finally:
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait(10)
            assert child.stdout is not None
            child.stdout.close()


async def test_an_idle_client_that_answers_pings_stays() -> None:
    """An idle but healthy client answers the keepalive pings and keeps its connection."""
    with BoundServer({"keepalive_interval": 0.2}) as server:
        client = await IPCClient(path=server.path).connect()
        try:
            await asyncio.sleep(1.5)  # several keepalive intervals of silence, on purpose
            assert client.is_ready
            assert (await server.astats())["connections"] == 1
        finally:
            await client.close()


async def test_a_partial_packet_that_stalls_is_dropped_after_read_timeout() -> None:
    """Half a packet, then silence: closed after read_timeout with END, its buffer freed."""
    with BoundServer({"read_timeout": 0.5, "keepalive_interval": None}) as server:
        sock = await asyncio.to_thread(raw_peer, server.path)
        try:
            packet = raw_packet(REQUEST, "x" * 1_000_000, "1")
            sock.sendall(packet[: len(packet) // 2])
            async with Bystander(server.path) as bystander:
                started = time.monotonic()
                packets = await asyncio.to_thread(
                    read_packets, sock, FrameDecoder(), lambda got: any(p["t"] == END for p in got)
                )
                assert 0.5 <= time.monotonic() - started < 3.0
                assert "read_timeout=0.5" in packets[-1]["d"]["m"]
                assert (await server.astats())["connections"] == 1  # the bystander alone
            assert bystander.worst < 1.0
        finally:
            sock.close()


async def test_a_flood_of_bad_packets_cannot_flood_the_log(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 malformed packets from one peer log a handful of lines; another peer still logs."""
    from ipc_server.protocol import frame

    server = IPCServer(path=path)
    await server.start()
    try:
        with caplog.at_level("WARNING", logger="ipc_server"):
            noisy = await asyncio.to_thread(raw_peer, path, None, client_id="n" * 10_000)
            noisy.sendall(frame(b"not json") * 1000)
            other = await IPCClient(path=path).connect()
            await other.request("sync")  # the flood has been read by now, or soon
            await wait_until_logged(caplog, lambda r: "not valid JSON" in r.getMessage(), 3)
            await asyncio.sleep(0.2)
            flood = [r for r in caplog.records if "not valid JSON" in r.getMessage()]
            assert 3 <= len(flood) <= 6, len(flood)
            assert all(len(r.getMessage()) < 1000 for r in flood)  # a 10,000-character id is cut
            other._report(RuntimeError("another client's first"))
            assert any("another client's first" in r.getMessage() for r in caplog.records)
            noisy.close()
            await other.close()
    finally:
        await server.close()


async def wait_until_logged(caplog: pytest.LogCaptureFixture, match: Any, count: int) -> None:
    deadline = time.monotonic() + 10
    while sum(1 for r in caplog.records if match(r)) < count:
        assert time.monotonic() < deadline, "not logged"
        await asyncio.sleep(0.01)


async def test_packets_held_when_the_peer_leaves_are_never_run(path: str) -> None:
    """A subscribe held behind a busy handler is dropped with its peer (no topic left behind).

    The order that showed it (found by fuzz/fuzz_server.py): the loop reports
    the loss, then the reads are released, in the same loop iteration.
    """
    server = IPCServer(path=path, max_concurrent_requests=1)

    async def slow(request: Any, respond: Respond, connection: IPCConnection) -> None:
        await asyncio.sleep(30)

    server.on("request", slow)
    await server.start()
    try:
        sock = await asyncio.to_thread(raw_peer, path)
        sock.sendall(raw_packet(REQUEST, "slow", "1") + raw_packet(REQUEST, {"sub": "left"}, "2"))
        conn = await within(wait_until_held(server))
        assert conn._held  # the subscribe waits
        conn._transport.abort()  # type: ignore[union-attr]  # the loss, reported next
        conn.release_reading("busy")  # and the release, right behind it
        await within(conn.wait_closed())
        await asyncio.sleep(0.05)
        assert server.topics == {}
        sock.close()
    finally:
        await server.close()


async def wait_until_held(server: IPCServer) -> IPCConnection:
    await wait_until(
        lambda: server.connections and server.connections[0].reading_held, "the reads to be held"
    )
    return server.connections[0]
