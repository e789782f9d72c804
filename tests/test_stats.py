"""stats(): what a server, a connection and a client hold and have carried; and the
built-in stats request, answered only to the peers ``allow_stats`` lets in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import POSIX_ONLY, wait_until
from ipc_server import IPCClient, IPCError, IPCServer, RemoteError
from ipc_server.sync import IPCClient as SyncIPCClient


async def test_server_connection_and_client_stats(path: str) -> None:
    """The counters follow the traffic: packets, bytes, topics, subscriptions, connects."""
    server = IPCServer(path=path)
    server.on("request", lambda request, respond, connection: respond(request))
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        for i in range(10):
            await client.request(i)
        await client.subscribe(["a", "b"])
        await client.send("one-way")
        await wait_until(lambda: server.stats()["packets_in"] >= 13, "the packets to arrive")
        stats = server.stats()
        assert stats["connections"] == 1
        assert stats["handshaking"] == 0
        assert stats["topics"] == 2
        assert stats["subscriptions"] == 2
        assert stats["packets_in"] >= 13  # CONNECTION, 10 requests, subscribe, send
        assert stats["packets_out"] >= 12
        assert stats["bytes_in"] > 0
        assert stats["bytes_out"] > 0
        assert stats["uptime"] >= 0
        conn = server.connections[0].stats()
        assert conn["id"] == client.id
        assert conn["topics"] == 2
        assert conn["packets_in"] == stats["packets_in"]
        mine = client.stats()
        assert mine["status"] == "READY"
        assert mine["connects"] == 1
        assert mine["topics"] == 2
        assert mine["connection"]["packets_out"] == stats["packets_in"]
        await client.close()
        await wait_until(lambda: not server.connections, "the disconnect")
        after = server.stats()
        assert after["connections"] == 0
        assert after["packets_in"] >= stats["packets_in"]  # the connection that left, included
    finally:
        await client.close()
        await server.close()


async def test_refusals_and_errors_are_counted(path: str) -> None:
    """Peers turned away and problems reported are counted by reason and by option."""
    server = IPCServer(path=path, max_connections=1, max_topics_per_connection=1)
    server.on("error", lambda error, connection: None)
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        with pytest.raises(IPCError):
            await IPCClient(path=path, reconnect=False).connect()
        assert not await client.subscribe(["x", "y"])
        await wait_until(lambda: server.stats()["refused"], "the refusal to be counted")
        stats = server.stats()
        assert stats["refused"] == {"server full": 1}
        assert stats["errors"].get("max_topics_per_connection") == 1
    finally:
        await client.close()
        await server.close()


@POSIX_ONLY
async def test_the_stats_request_is_answered_to_the_same_uid(path: str) -> None:
    """server_stats() from a client of the server's own uid; per connection on demand."""
    server = IPCServer(path=path)
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        stats = await client.server_stats()
        assert stats["connections"] == 1
        full = await client.server_stats(connections=True)
        assert [c["id"] for c in full["per_connection"]] == [client.id]

        def blocking() -> dict[str, Any]:
            with SyncIPCClient(path=path) as other:
                result: dict[str, Any] = other.server_stats(connections=True)
                return result

        seen = await asyncio.to_thread(blocking)
        assert len(seen["per_connection"]) == 2
    finally:
        await client.close()
        await server.close()


async def test_the_stats_request_is_refused_when_not_allowed(path: str) -> None:
    """allow_stats=False refuses every peer: RemoteError(PermissionError); nothing reaches handlers."""
    server = IPCServer(path=path, allow_stats=False)
    seen: list[Any] = []
    server.on("request", lambda request, respond, connection: seen.append(request))
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        with pytest.raises(RemoteError) as caught:
            await client.server_stats()
        assert caught.value.type == "PermissionError"
        assert seen == []
    finally:
        await client.close()
        await server.close()


async def test_the_stats_request_over_tcp_needs_allow_stats() -> None:
    """Over TCP a peer has no uid: refused by default, answered with allow_stats=True."""
    for allow, answered in ((None, False), (True, True)):
        server = IPCServer(host="127.0.0.1", port=0, allow_stats=allow)
        await server.start()
        assert server.port is not None
        client = await IPCClient(host="127.0.0.1", port=server.port).connect()
        try:
            if answered:
                assert (await client.server_stats())["connections"] == 1
            else:
                with pytest.raises(RemoteError):
                    await client.server_stats()
        finally:
            await client.close()
            await server.close()
