"""Connecting: the payload, the ready event, the id, the status events, misuse."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import short_socket_path
from ipc_server import ConnectionClosedError, IPCClientStatus

from .adapters import Front
from .peer import Peer
from .polling import Recorder, wait_until

S = IPCClientStatus


def test_connect_payload_ready_and_id(front: Front, server: Peer) -> None:
    """connect(payload) reaches the server's connect event; ready(info) has the id; the client is ready."""
    client = front.client()
    ready: Recorder[dict[str, Any]] = Recorder()
    client.on("ready", ready)
    client.connect({"who": "me", "n": [1, 2]})
    assert client.is_ready
    assert client.status is S.READY
    assert isinstance(client.id, str)
    assert client.id
    assert server.connects.wait_for(1, "connect event") == [(client.id, {"who": "me", "n": [1, 2]})]
    [info] = ready.wait_for(1, "ready event")
    assert info["id"] == client.id
    assert client.info["id"] == client.id
    assert server.connection_ids == [client.id]


def test_connect_without_payload(front: Front, server: Peer) -> None:
    """connect() without a payload sends None to the server's connect event."""
    client = front.connected()
    assert server.connects.wait_for(1, "connect event") == [(client.id, None)]


def test_status_events_on_connect_and_close(front: Front, server: Peer) -> None:
    """A plain connect emits CONNECTING, CONNECTED, READY; close then DISCONNECTED, IDLE."""
    client = front.client()
    statuses: Recorder[IPCClientStatus] = Recorder()
    client.on("status", statuses)
    assert client.status is S.IDLE
    client.connect()
    assert statuses.wait_for(3, "status event") == [S.CONNECTING, S.CONNECTED, S.READY]
    assert client.close() is True
    seen = statuses.wait_for(5, "status event")
    assert seen == [S.CONNECTING, S.CONNECTED, S.READY, S.DISCONNECTED, S.IDLE]
    assert client.status is S.IDLE
    assert [int(s) for s in S] == [0, 1, 2, 3, 4, 5]


def test_connect_twice_is_a_runtime_error(front: Front, server: Peer) -> None:
    """connect() on a connected client raises RuntimeError and leaves the connection alone."""
    client = front.connected()
    with pytest.raises(RuntimeError):
        client.connect()
    assert client.is_ready
    assert client.request("still") == "still"
    assert server.connection_count == 1


def test_connect_again_after_close(front: Front, server: Peer) -> None:
    """A closed client can connect again; it is ready and its requests are answered."""
    client = front.connected()
    assert client.close() is True
    client.connect("again")
    assert client.is_ready
    assert client.request("x") == "x"
    assert server.connects.wait_for(2, "connect event")[-1][1] == "again"


def test_operations_before_connect_raise_connection_closed(front: Front, server: Peer) -> None:
    """Before connect(), request, ping, send, subscribe and publish raise ConnectionClosedError."""
    client = front.client()
    with pytest.raises(ConnectionClosedError):
        client.request("x", timeout=1.0)
    with pytest.raises(ConnectionClosedError):
        client.ping(timeout=1.0)
    with pytest.raises(ConnectionClosedError):
        client.send("x")
    with pytest.raises(ConnectionClosedError):
        client.subscribe("t", timeout=1.0)
    with pytest.raises(ConnectionClosedError):
        client.publish("t", "m", timeout=1.0)
    assert client.status is S.IDLE


def test_connect_to_nothing_raises_and_stays_idle(front: Front) -> None:
    """connect() where nothing listens raises the OSError at once; the client stays IDLE."""
    with short_socket_path() as nowhere:
        client = front.client(path=nowhere)
        with pytest.raises(FileNotFoundError):
            client.connect()
        assert client.status is S.IDLE
        assert not client.is_ready


@pytest.fixture
def mute_listener() -> Iterator[str]:
    """A Unix socket that accepts connections and never answers (a hung server)."""
    with short_socket_path() as path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(8)
            yield path
        finally:
            listener.close()


def test_connect_timeout_option_bounds_the_handshake(front: Front, mute_listener: str) -> None:
    """A server that never answers the handshake: connect() raises TimeoutError after connect_timeout."""
    client = front.client(path=mute_listener, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.connect()
    assert 0.2 < time.monotonic() - started < 3.0
    wait_until(lambda: client.status is S.IDLE, "the client back to IDLE")


def test_connect_timeout_argument_overrides_the_option(front: Front, mute_listener: str) -> None:
    """connect(timeout=) bounds this connect instead of connect_timeout."""
    client = front.client(path=mute_listener, connect_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.connect(None, timeout=0.3)
    assert time.monotonic() - started < 3.0
    wait_until(lambda: client.status is S.IDLE, "the client back to IDLE")
