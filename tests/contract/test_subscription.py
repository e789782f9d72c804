"""subscription(topic): its messages, its end when the client closes, what it leaves subscribed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ipc_server import ConnectionClosedError

from .adapters import Front
from .peer import Peer
from .polling import Background, Recorder


def test_subscription_yields_published_messages(front: Front, server: Peer) -> None:
    """subscription() subscribes on entry; get() and iteration yield the topic's messages in order."""
    client = front.connected()
    with client.subscription("t") as sub:
        assert "t" in server.topics
        assert client.publish("t", "one") is True
        assert server.publish("t", "two") == 1
        assert sub.get(timeout=5.0) == "one"
        assert sub.get(timeout=5.0) == "two"
        client.publish("t", "three")
        assert next(iter(sub)) == "three"


def test_subscription_get_times_out_with_builtin_timeout_error(front: Front, server: Peer) -> None:
    """get(timeout) with no message raises the builtin TimeoutError after about that time."""
    client = front.connected()
    with client.subscription("quiet") as sub:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.2)
        assert 0.15 < time.monotonic() - started < 3.0
        client.publish("quiet", "late")
        assert sub.get(timeout=5.0) == "late"


def test_subscription_takes_a_timeout(front: Front, server: Peer) -> None:
    """subscription(topic, timeout=) is accepted (the bound on its subscribe and unsubscribe)."""
    client = front.connected()
    with client.subscription("t", timeout=5.0) as sub:
        client.publish("t", 1)
        assert sub.get(timeout=5.0) == 1
    assert server.topics == set()


@pytest.mark.parametrize("how", ["close", "destroy"])
@pytest.mark.parametrize("maxsize", [0, 2])
def test_subscription_ends_when_the_client_closes(
    front: Front, server: Peer, maxsize: int, how: str
) -> None:
    """After the client closes, iteration yields what was queued and stops; get() then raises ConnectionClosedError.

    Also with ``maxsize`` when the queue is full at close time (messages beyond it are dropped).
    """
    client = front.connected()
    seen: Recorder[Any] = Recorder()
    client.on("t", seen)  # runs after the subscription has queued the message
    with client.subscription("t", maxsize=maxsize) as sub:
        for n in range(3):
            assert client.publish("t", n) is True
        seen.wait_for(3, "t listener")
        if how == "close":
            assert client.close() is True
        else:
            assert client.destroy() is True
        rest = Background(lambda: list(sub), "iterating the subscription")
        assert rest.result(timeout=2.0) == ([0, 1] if maxsize else [0, 1, 2])
        with pytest.raises(ConnectionClosedError):
            sub.get(timeout=1.0)
        with pytest.raises(ConnectionClosedError):
            sub.get(timeout=1.0)  # stays ended


def test_subscription_iteration_waiting_ends_on_close(front: Front, server: Peer) -> None:
    """An iteration waiting for the next message stops when the client closes."""
    client = front.connected()
    with client.subscription("t") as sub:
        items = Background(lambda: list(sub), "iterating the subscription")
        client.publish("t", "only")
        client.close()
        assert items.result(timeout=5.0) == ["only"]


def test_subscription_exit_unsubscribes(front: Front, server: Peer) -> None:
    """Leaving subscription() unsubscribes a topic that was not subscribed otherwise."""
    client = front.connected()
    with client.subscription("t"):
        assert client.topics == ["t"]
        assert server.topics == {"t"}
    assert client.topics == []
    assert server.topics == set()


def test_subscription_exit_keeps_an_explicit_subscription(front: Front, server: Peer) -> None:
    """A topic subscribed explicitly before stays subscribed after subscription() exits."""
    client = front.connected()
    got: Recorder[Any] = Recorder()
    client.on("t", got)
    assert client.subscribe("t") is True
    with client.subscription("t") as sub:
        client.publish("t", "inside")
        assert sub.get(timeout=5.0) == "inside"
    assert client.topics == ["t"]
    assert server.topics == {"t"}
    client.publish("t", "after")
    assert got.wait_for(2, "t listener") == ["inside", "after"]


def test_subscription_exit_keeps_the_topic_for_another_subscription(
    front: Front, server: Peer
) -> None:
    """Nested subscription()s of one topic: the topic stays until the last one exits."""
    client = front.connected()
    with client.subscription("t") as outer:
        with client.subscription("t") as inner:
            client.publish("t", "both")
            assert inner.get(timeout=5.0) == "both"
            assert outer.get(timeout=5.0) == "both"
        assert server.topics == {"t"}
        assert client.topics == ["t"]
        client.publish("t", "outer only")
        assert outer.get(timeout=5.0) == "outer only"
    assert server.topics == set()
    assert client.topics == []


def test_subscription_exit_after_an_explicit_unsubscribe(front: Front, server: Peer) -> None:
    """unsubscribe() inside subscription() ends the server-side subscription; exit is then quiet."""
    client = front.connected()
    with client.subscription("t"):
        assert client.unsubscribe("t") is True
        assert server.topics == set()
    assert client.topics == []
    assert client.is_ready


@pytest.mark.parametrize("timeout", [0, None])
def test_subscription_get_zero_or_none_waits_without_bound(
    front: Front, server: Peer, timeout: float | None
) -> None:
    """get(timeout=0 or None) waits as long as it takes: a queued message is returned, not a timeout."""
    client = front.connected()
    with client.subscription("t") as sub:
        client.publish("t", "queued")
        assert sub.get(timeout=timeout) == "queued"
        later = Background(lambda: sub.get(timeout=timeout), "get")
        client.publish("t", "later")
        assert later.result() == "later"


def test_subscription_get_negative_timeout_is_a_value_error(front: Front, server: Peer) -> None:
    """get(timeout=-1) is the caller's mistake: ValueError (as for request), not a timeout."""
    client = front.connected()
    with client.subscription("t") as sub:
        client.publish("t", "queued")
        with pytest.raises(ValueError, match="timeout"):
            sub.get(timeout=-1)
        assert sub.get(timeout=5.0) == "queued"
