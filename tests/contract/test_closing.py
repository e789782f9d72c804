"""close() and destroy(): graceful and immediate ends, their results, events and errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ipc_server import ConnectionClosedError, ConnectionDestroyedError, IPCClientStatus

from .adapters import Client, Front
from .peer import Peer
from .polling import Background, Recorder, wait_until

S = IPCClientStatus


def closing_under_way(client: Client) -> bool:
    """Whether the client refuses new requests (it does from the moment close() starts)."""
    try:
        client.request("probe", timeout=5.0)
    except ConnectionClosedError:
        return True
    return False


def test_close_returns_true_then_false(front: Front, server: Peer) -> None:
    """close() is True when it closed a connection, False after; the close event fires once with the reason."""
    client = front.connected()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    assert client.close("bye") is True
    assert client.status is S.IDLE
    assert not client.is_ready
    assert closes.wait_for(1, "close event") == ["bye"]
    assert client.close() is False
    assert client.destroy() is False
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")
    assert server.disconnects.wait_for(1, "disconnect event") == [(client.id, "bye")]
    assert closes.items == ["bye"]


def test_close_answers_pending_requests_first(front: Front, server: Peer) -> None:
    """close() waits for a pending request's answer; requests made meanwhile are refused."""
    client = front.connected()
    pending = Background(lambda: client.request({"cmd": "hold", "value": "ok"}), "request")
    server.held.wait_for(1, "the request at the server")
    closing = Background(lambda: client.close("done"), "close")
    wait_until(lambda: closing_under_way(client), "close() under way")
    assert not closing.done()
    server.release()
    assert pending.result() == "ok"
    assert closing.result() is True
    assert client.status is S.IDLE
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")
    assert server.disconnects.wait_for(1, "disconnect event")[0][1] == "done"


def test_operations_after_close_raise_connection_closed(front: Front, server: Peer) -> None:
    """After close(), request, ping, send, subscribe and publish raise ConnectionClosedError."""
    client = front.connected()
    client.close("over")
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


def test_destroy_fails_pending_requests(front: Front, server: Peer) -> None:
    """destroy() returns True at once; a pending request fails with ConnectionDestroyedError; close fires."""
    client = front.connected()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    pending = Background(lambda: client.request({"cmd": "hold"}, timeout=30.0), "request")
    server.held.wait_for(1, "the request at the server")
    started = time.monotonic()
    assert client.destroy("gone") is True
    assert time.monotonic() - started < 1.0
    assert isinstance(pending.exception(timeout=1.0), ConnectionDestroyedError)
    assert client.status is S.IDLE
    assert closes.wait_for(1, "close event") == ["gone"]
    assert client.destroy() is False
    assert client.close() is False
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")
    with pytest.raises(ConnectionClosedError):
        client.request("after")


def test_destroy_during_close(front: Front, server: Peer) -> None:
    """destroy() during a close() waiting on a pending request returns True at once and ends that close.

    The pending request fails with ConnectionDestroyedError; close() returns
    well within its timeout; the client ends IDLE with one close event.
    """
    client = front.connected()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    pending = Background(lambda: client.request({"cmd": "hold"}, timeout=30.0), "request")
    server.held.wait_for(1, "the request at the server")
    closing = Background(lambda: client.close("closing", timeout=10.0), "close")
    wait_until(lambda: closing_under_way(client), "close() under way")
    started = time.monotonic()
    assert client.destroy("abort") is True
    assert time.monotonic() - started < 1.0
    assert isinstance(pending.exception(timeout=1.0), ConnectionDestroyedError)
    assert closing.result(timeout=2.0) is True
    assert client.status is S.IDLE
    assert len(closes.wait_for(1, "close event")) == 1
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")
    assert len(closes) == 1


def test_close_with_an_unencodable_reason(front: Front, server: Peer) -> None:
    """close(reason) with a reason the codec cannot carry still closes: the server is told str(reason)."""
    client = front.connected()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    reason = object()
    assert client.close(reason) is True
    assert client.status is S.IDLE
    assert not client.is_ready
    assert closes.wait_for(1, "close event") == [reason]
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")
    assert server.disconnects.wait_for(1, "disconnect event") == [(client.id, str(reason))]
    assert len(closes) == 1


def test_server_close_for_good(front: Front, server: Peer) -> None:
    """server.close() without allow_reconnect: the client emits close(reason) once and ends IDLE."""
    client = front.connected()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    statuses: Recorder[IPCClientStatus] = Recorder()
    client.on("status", statuses)
    server.close()
    assert closes.wait_for(1, "close event") == ["server closed"]
    wait_until(lambda: client.status is S.IDLE, "the client IDLE")
    assert statuses.wait_for(2, "status event") == [S.DISCONNECTED, S.IDLE]
    assert client.close() is False
    with pytest.raises(ConnectionClosedError):
        client.request("x", timeout=1.0)


def test_listener_error_is_reported_and_harmless(front: Front, server: Peer) -> None:
    """A topic listener that raises is reported on the error event; the connection goes on."""
    client = front.connected()
    errors: Recorder[BaseException] = Recorder()
    client.on("error", errors)

    def broken(message: Any) -> None:
        raise RuntimeError(f"listener broke on {message}")

    got: Recorder[Any] = Recorder()
    client.on("t", broken)
    client.on("t", got)
    client.subscribe("t")
    client.publish("t", 1)
    [error] = errors.wait_for(1, "error event")
    assert isinstance(error, RuntimeError)
    assert got.wait_for(1, "the next listener") == [1]
    assert client.is_ready
    assert client.request("still") == "still"


def test_close_and_destroy_before_connect_return_false(front: Front, server: Peer) -> None:
    """close() and destroy() on a client that never connected return False and emit nothing."""
    client = front.client()
    closes: Recorder[Any] = Recorder()
    client.on("close", closes)
    assert client.close() is False
    assert client.destroy() is False
    assert client.status is S.IDLE
    client.connect()
    assert closes.items == []
    assert client.close() is True
    assert len(closes.wait_for(1, "close event")) == 1


def test_lifecycle_events_in_order(front: Front, server: Peer) -> None:
    """connect then close emit status, ready and close events in one order: close comes last."""
    client = front.client()
    events: Recorder[tuple[str, Any]] = Recorder()
    client.on("status", lambda status: events(("status", status)))
    client.on("ready", lambda info: events(("ready", info["id"])))
    client.on("close", lambda reason: events(("close", reason)))
    client.connect()
    client.close("bye")
    assert events.wait_for(7, "event") == [
        ("status", S.CONNECTING),
        ("status", S.CONNECTED),
        ("status", S.READY),
        ("ready", client.id),
        ("status", S.DISCONNECTED),
        ("status", S.IDLE),
        ("close", "bye"),
    ]


def test_close_timeout_bounds_the_wait(front: Front, server: Peer) -> None:
    """close(timeout=) gives up waiting for a pending answer after that time; the request then fails."""
    client = front.connected()
    pending = Background(lambda: client.request({"cmd": "hold"}, timeout=30.0), "request")
    server.held.wait_for(1, "the request at the server")
    started = time.monotonic()
    assert client.close("impatient", timeout=0.3) is True
    assert 0.25 < time.monotonic() - started < 3.0
    error = pending.exception(timeout=2.0)
    assert isinstance(error, ConnectionClosedError)
    assert error.reason == "impatient"
    assert client.status is S.IDLE
    wait_until(lambda: server.connection_count == 0, "the server saw the client go")


def test_errors_after_destroy_carry_the_reason(front: Front, server: Peer) -> None:
    """After destroy(reason), the pending request's error and later requests' errors carry that reason."""
    client = front.connected()
    pending = Background(lambda: client.request({"cmd": "hold"}, timeout=30.0), "request")
    server.held.wait_for(1, "the request at the server")
    client.destroy("gone")
    error = pending.exception()
    assert isinstance(error, ConnectionDestroyedError)
    assert error.reason == "gone"
    with pytest.raises(ConnectionClosedError) as raised:
        client.request("after", timeout=1.0)
    assert raised.value.reason == "gone"


def test_subscription_on_a_closed_client_raises(front: Front, server: Peer) -> None:
    """Entering subscription() on a closed client raises ConnectionClosedError and leaves nothing behind."""
    client = front.connected()
    client.close()
    with pytest.raises(ConnectionClosedError), client.subscription("t"):
        pass
    assert client.topics == []
