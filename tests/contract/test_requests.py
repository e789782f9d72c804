"""Requests, pings and one-way messages, both ways; timeouts; errors from the other side."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ipc_server import RemoteError, RequestTimeoutError

from .adapters import Front
from .peer import Peer
from .polling import Background, Recorder


def test_request_returns_the_answer(front: Front, server: Peer) -> None:
    """request() returns the server handler's answer, whatever the codec can carry."""
    client = front.connected()
    answers: list[Any] = [{"cmd": "echo", "n": [1, 2.5, None, True]}, "text", 0, None, [], False]
    for data in answers:
        assert client.request(data) == data


def test_request_timeout_defaults_to_the_option(front: Front, server: Peer) -> None:
    """Without timeout=, request() waits request_timeout seconds, then raises RequestTimeoutError."""
    client = front.connected(request_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError) as raised:
        client.request({"cmd": "hold"})
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 2.0
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.timeout == pytest.approx(0.2)
    assert client.request("after") == "after"  # the late answer does not confuse the next one


def test_request_timeout_argument_overrides_the_option(front: Front, server: Peer) -> None:
    """request(timeout=) replaces request_timeout, longer or shorter."""
    client = front.connected(request_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        client.request({"cmd": "hold"}, timeout=0.6)
    assert 0.5 < time.monotonic() - started < 3.0
    patient = front.connected(request_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        patient.request({"cmd": "hold"}, timeout=0.2)
    assert time.monotonic() - started < 3.0


def test_request_timeout_default_is_ten_seconds(front: Front, server: Peer) -> None:
    """A client made without request_timeout has the 10 s default."""
    client = front.client()
    assert client.request_timeout == 10.0


def test_handler_error_is_a_remote_error(front: Front, server: Peer) -> None:
    """A server handler that raises gives the requester RemoteError with its type and message."""
    client = front.connected()
    with pytest.raises(RemoteError) as raised:
        client.request({"cmd": "fail", "why": "boom"})
    assert raised.value.type == "ValueError"
    assert raised.value.message == "boom"
    assert client.request("still") == "still"


def test_ping_returns_the_latency(front: Front, server: Peer) -> None:
    """ping() returns the round trip in seconds, a small positive float, with or without data."""
    client = front.connected()
    for latency in (client.ping(), client.ping({"some": "data"}, timeout=5.0)):
        assert isinstance(latency, float)
        assert 0.0 < latency < 5.0


def test_send_reaches_the_server_message_event(front: Front, server: Peer) -> None:
    """send() delivers a one-way message to the server's message event, in order."""
    client = front.connected()
    client.send("one")
    client.send({"two": 2})
    assert server.messages.wait_for(2, "message event") == [
        ("one", client.id),
        ({"two": 2}, client.id),
    ]


def test_send_takes_a_timeout(front: Front, server: Peer) -> None:
    """send(data, timeout=) is accepted (the bound on waiting to write)."""
    client = front.connected()
    client.send("bounded", timeout=5.0)
    assert server.messages.wait_for(1, "message event") == [("bounded", client.id)]


def test_server_message_reaches_the_message_event(front: Front, server: Peer) -> None:
    """A message from the server (broadcast) fires the client's message event."""
    client = front.connected()
    got: Recorder[Any] = Recorder()
    client.on("message", got)
    assert server.broadcast({"hello": "all"}) == 1
    assert got.wait_for(1, "message event") == [{"hello": "all"}]


def test_server_request_is_answered_by_a_request_listener(front: Front, server: Peer) -> None:
    """The server's request to the client is answered by the client's request listener."""
    client = front.connected()
    client.on("request", lambda request, respond: respond({"double": request * 2}))
    assert server.request_client(21) == {"double": 42}


def test_server_request_without_a_listener_gets_none(front: Front, server: Peer) -> None:
    """A server request to a client without request listener is answered None, never a hang."""
    front.connected()
    assert server.request_client("anyone?") is None


def test_failing_request_listener_is_a_remote_error_and_an_error_event(
    front: Front, server: Peer
) -> None:
    """A client request listener that raises: the server gets RemoteError; the client's error event fires."""
    client = front.connected()
    errors: Recorder[BaseException] = Recorder()
    client.on("error", errors)

    def fail(request: Any, respond: Any) -> None:
        raise KeyError("nope")

    client.on("request", fail)
    with pytest.raises(RemoteError) as raised:
        server.request_client("x")
    assert raised.value.type == "KeyError"
    [error] = errors.wait_for(1, "error event")
    assert isinstance(error, KeyError)
    assert client.is_ready
    assert client.request("still") == "still"


def test_unencodable_data_is_a_type_error(front: Front, server: Peer) -> None:
    """request, send and publish of data the codec cannot carry raise TypeError; the client goes on."""
    client = front.connected()
    with pytest.raises(TypeError):
        client.request(object())
    with pytest.raises(TypeError):
        client.send(object())
    with pytest.raises(TypeError):
        client.publish("t", object())
    assert client.is_ready
    assert client.request("still") == "still"


@pytest.mark.parametrize("timeout", [-1, -0.5])
def test_negative_timeouts_are_value_errors(front: Front, server: Peer, timeout: float) -> None:
    """A negative timeout is the caller's mistake: ValueError, nothing waited for."""
    client = front.connected()
    with pytest.raises(ValueError, match="timeout"):
        client.request("x", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        client.ping(timeout=timeout)
    assert client.request("still") == "still"


@pytest.mark.parametrize("timeout", [0, None])
def test_zero_or_none_timeout_waits_without_bound(
    front: Front, server: Peer, timeout: float | None
) -> None:
    """request(timeout=0 or None) waits as long as it takes (here: until the server answers)."""
    client = front.connected(request_timeout=0.1)
    pending = Background(
        lambda: client.request({"cmd": "hold", "value": "late"}, timeout=timeout), "request"
    )
    server.held.wait_for(1, "the request at the server")
    assert pending.still_running(after=0.4)  # well past request_timeout
    server.release()
    assert pending.result() == "late"
