"""subscribe, unsubscribe, publish: their results, delivery, topics named like events."""

from __future__ import annotations

from typing import Any

import pytest

from .adapters import Front
from .peer import Peer
from .polling import Recorder


def test_subscribe_publish_unsubscribe_results(front: Front, server: Peer) -> None:
    """subscribe is True; publish is True and reaches the topic's listener; unsubscribe True, then False."""
    client = front.connected()
    news: Recorder[Any] = Recorder()
    client.on("news", news)
    assert client.subscribe("news") is True
    assert client.topics == ["news"]
    assert server.topics == {"news"}
    assert client.publish("news", "hello") is True
    assert news.wait_for(1, "news listener") == ["hello"]
    assert client.unsubscribe("news") is True
    assert client.topics == []
    assert server.topics == set()
    assert client.unsubscribe("news") is False


def test_falsy_messages_are_delivered(front: Front, server: Peer) -> None:
    """Published messages that are falsy (0, "", None, False, [], {}) reach the listener as they are."""
    client = front.connected()
    got: Recorder[Any] = Recorder()
    client.on("t", got)
    assert client.subscribe("t") is True
    falsy: list[Any] = [0, "", None, False, [], {}]
    for message in falsy:
        assert client.publish("t", message) is True
    assert got.wait_for(len(falsy), "t listener") == falsy


def test_publish_without_message_sends_none(front: Front, server: Peer) -> None:
    """publish(topic) without a message delivers None."""
    client = front.connected()
    got: Recorder[Any] = Recorder()
    client.on("t", got)
    client.subscribe("t")
    assert client.publish("t") is True
    assert got.wait_for(1, "t listener") == [None]


def test_server_publish_reaches_the_listener(front: Front, server: Peer) -> None:
    """A publish from the server reaches the subscribed client's topic listener."""
    client = front.connected()
    got: Recorder[Any] = Recorder()
    client.on("from-server", got)
    client.subscribe("from-server")
    assert server.publish("from-server", {"x": 1}) == 1
    assert got.wait_for(1, "listener") == [{"x": 1}]


def test_publish_reaches_other_clients(front: Front, server: Peer) -> None:
    """A client's publish reaches every subscriber, and not a client that did not subscribe."""
    sender = front.connected()
    receiver = front.connected()
    bystander = front.connected()
    got: Recorder[Any] = Recorder()
    stray: Recorder[Any] = Recorder()
    receiver.on("t", got)
    bystander.on("t", stray)
    receiver.subscribe("t")
    assert sender.publish("t", "m") is True
    assert got.wait_for(1, "receiver") == ["m"]
    bystander.subscribe("sentinel")
    bystander.on("sentinel", stray)
    sender.publish("sentinel", "last")
    assert stray.wait_for(1, "bystander's sentinel") == ["last"]


def test_subscribe_a_list_of_topics(front: Front, server: Peer) -> None:
    """subscribe([a, b]) subscribes to each; unsubscribe([a, b]) undoes both."""
    client = front.connected()
    got: Recorder[tuple[str, Any]] = Recorder()
    client.on("a", lambda m: got(("a", m)))
    client.on("b", lambda m: got(("b", m)))
    assert client.subscribe(["a", "b"]) is True
    assert sorted(client.topics) == ["a", "b"]
    assert server.topics == {"a", "b"}
    client.publish("a", 1)
    client.publish("b", 2)
    assert got.wait_for(2, "a and b listeners") == [("a", 1), ("b", 2)]
    assert client.unsubscribe(["a", "b"]) is True
    assert client.topics == []
    assert server.topics == set()


def test_bad_topics_are_type_errors(front: Front, server: Peer) -> None:
    """A topic that is not a str (or a non-empty list of str) is a TypeError, nothing sent."""
    client = front.connected()
    with pytest.raises(TypeError):
        client.subscribe(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.subscribe([])
    with pytest.raises(TypeError):
        client.unsubscribe(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.publish(["t"], "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError), client.subscription(7):  # type: ignore[arg-type]
        pass
    assert server.topics == set()
    assert client.is_ready


def test_pubsub_calls_take_a_timeout(front: Front, server: Peer) -> None:
    """subscribe, publish and unsubscribe accept timeout= as a keyword."""
    client = front.connected()
    assert client.subscribe("t", timeout=5.0) is True
    assert client.publish("t", "m", timeout=5.0) is True
    assert client.unsubscribe("t", timeout=5.0) is True


BUILT_IN_EVENTS = ["close", "error", "ready", "message", "status", "request"]


@pytest.mark.parametrize("topic", BUILT_IN_EVENTS)
def test_topic_named_like_an_event_reaches_subscription_only(
    front: Front, server: Peer, topic: str
) -> None:
    """A message on a topic named like a built-in event does not fire that event; subscription() gets it."""
    client = front.connected()
    fired: Recorder[Any] = Recorder()
    client.on(topic, lambda *args: fired(args))
    after: Recorder[Any] = Recorder()
    client.on("after", after)
    client.subscribe("after")
    with client.subscription(topic) as sub:
        assert client.publish(topic, "not the event") is True
        assert sub.get(timeout=5.0) == "not the event"
        assert server.publish(topic, "nor this") == 1
        assert sub.get(timeout=5.0) == "nor this"
        # Listeners run in order: once "after" has run, a misfire would have happened.
        client.publish("after", "sentinel")
        after.wait_for(1, "the sentinel")
    assert fired.items == []
    assert client.is_ready
