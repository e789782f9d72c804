"""Wildcard topics and worker groups, on both clients (docs/guide.md, "Patterns")."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from .adapters import Front
from .peer import Peer
from .polling import Recorder, wait_until

TOPIC_ERROR = "invalid topic|cannot publish"


def _pairs() -> tuple[Recorder[tuple[Any, str]], Any]:
    got: Recorder[tuple[Any, str]] = Recorder()

    def listener(message: Any, topic: str) -> None:
        got((message, topic))

    return got, listener


def test_star_matches_one_token_and_listeners_get_the_topic(front: Front, server: Peer) -> None:
    """``orders.*`` gets ``orders.new`` (listener(message, topic)), not ``orders.eu.new`` or ``orders``."""
    client = front.connected()
    got, listener = _pairs()
    client.on("orders.*", listener)
    assert client.subscribe("orders.*") is True
    assert client.topics == ["orders.*"]
    for topic in ("orders.eu.new", "orders", "orders.new", "other.new"):
        assert client.publish(topic, topic.upper()) is True
    sentinel: Recorder[Any] = Recorder()
    client.on("sentinel", sentinel)
    client.subscribe("sentinel")
    client.publish("sentinel", 1)
    sentinel.wait_for(1, "sentinel")
    assert got.items == [("ORDERS.NEW", "orders.new")]


def test_gt_matches_one_or_more_tokens(front: Front, server: Peer) -> None:
    """``orders.>`` gets ``orders.new`` and ``orders.eu.new``, not ``orders``; ``>`` alone gets all."""
    client = front.connected()
    some, on_some = _pairs()
    every, on_every = _pairs()
    client.on("orders.>", on_some)
    client.on(">", on_every)
    assert client.subscribe(["orders.>", ">"]) is True
    for topic in ("orders", "orders.new", "orders.eu.new", "x"):
        assert client.publish(topic, 0) is True
    every.wait_for(4, "'>' listener")
    assert [topic for _, topic in every.items] == ["orders", "orders.new", "orders.eu.new", "x"]
    assert [topic for _, topic in some.items] == ["orders.new", "orders.eu.new"]


def test_one_delivery_however_many_patterns_match(front: Front, server: Peer) -> None:
    """Subscribed by an exact topic and two patterns that match, the client gets the message once
    from the server and hands it to each matching listener (the exact one as listener(message))."""
    client = front.connected()
    exact: Recorder[Any] = Recorder()
    star, on_star = _pairs()
    rest, on_rest = _pairs()
    client.on("a.b", exact)
    client.on("a.*", on_star)
    client.on("a.>", on_rest)
    assert client.subscribe(["a.b", "a.*", "a.>"]) is True
    assert server.publish("a.b", "m") == 1  # one connection, one delivery
    rest.wait_for(1, "a.> listener")
    star.wait_for(1, "a.* listener")
    assert exact.wait_for(1, "a.b listener") == ["m"]
    assert star.items == [("m", "a.b")]
    assert rest.items == [("m", "a.b")]


@pytest.mark.parametrize("pattern", ["a.>.b", "a..b", "*x", "a.b*", "", ".a", "a."])
def test_invalid_patterns_raise_value_error(front: Front, server: Peer, pattern: str) -> None:
    """subscribe, unsubscribe and subscription() refuse an invalid pattern before sending it."""
    client = front.connected()
    with pytest.raises(ValueError, match=TOPIC_ERROR):
        client.subscribe(pattern)
    with pytest.raises(ValueError, match=TOPIC_ERROR):
        client.subscribe(["ok", pattern])
    with pytest.raises(ValueError, match=TOPIC_ERROR), client.subscription(pattern):
        pass  # pragma: no cover - never entered
    assert server.topics == set()


@pytest.mark.parametrize("topic", ["orders.*", "orders.>", ">", "a..b", ""])
def test_publishing_to_a_pattern_raises_value_error(front: Front, server: Peer, topic: str) -> None:
    """publish refuses a topic with a wildcard token (and an invalid one), as server.publish does."""
    client = front.connected()
    with pytest.raises(ValueError, match=TOPIC_ERROR):
        client.publish(topic, 1)
    with pytest.raises(ValueError, match=TOPIC_ERROR):
        server.publish(topic, 1)


def test_pattern_subscription_yields_topic_and_message(front: Front, server: Peer) -> None:
    """subscription(pattern) yields (topic, message); an exact subscription still yields the message."""
    client = front.connected()
    with client.subscription("sensors.>") as sensors, client.subscription("sensors.t1") as t1:
        assert server.publish("sensors.t1", 21.5) == 1
        assert server.publish("sensors.room.t2", 19.0) == 1
        assert sensors.get(timeout=5.0) == ("sensors.t1", 21.5)
        assert sensors.get(timeout=5.0) == ("sensors.room.t2", 19.0)
        assert t1.get(timeout=5.0) == 21.5
    assert server.topics == set()


def test_group_members_share_the_messages_plain_subscribers_get_all(
    front: Front, server: Peer
) -> None:
    """Each message goes to every plain subscriber and to one member of each group, in turn."""
    members = [front.connected() for _ in range(2)]
    plain = front.connected()
    audit = front.connected()  # a second group of one
    got: Recorder[tuple[int, Any]] = Recorder()
    for index, member in enumerate(members):
        member.on("jobs.>", lambda message, topic, index=index: got((index, message)))
        assert member.subscribe("jobs.>", group="workers") is True
    everything: Recorder[Any] = Recorder()
    plain.on("jobs.resize", everything)
    assert plain.subscribe("jobs.resize") is True
    audited: Recorder[Any] = Recorder()
    audit.on("jobs.resize", audited)
    assert audit.subscribe("jobs.resize", group="audit") is True
    for n in range(10):
        assert server.publish("jobs.resize", n) == 3  # one worker, the plain one, the auditor
    assert everything.wait_for(10, "plain subscriber") == list(range(10))
    assert audited.wait_for(10, "the audit group's one member") == list(range(10))
    got.wait_for(10, "group members")
    shares = Counter(index for index, _ in got.items)
    assert shares == {0: 5, 1: 5}  # round-robin
    assert sorted(message for _, message in got.items) == list(range(10))


def test_leaving_a_group(front: Front, server: Peer) -> None:
    """unsubscribe(topic, group=) leaves the group; the other member then gets every message."""
    one, two = front.connected(), front.connected()
    got: Recorder[str] = Recorder()
    one.on("q", lambda m: got("one"))
    two.on("q", lambda m: got("two"))
    one.subscribe("q", group="g")
    two.subscribe("q", group="g")
    assert one.unsubscribe("q") is False  # not a plain subscriber
    assert one.unsubscribe("q", group="g") is True
    assert one.topics == []
    for n in range(4):
        server.publish("q", n)
    assert got.wait_for(4, "messages") == ["two"] * 4


def test_group_must_be_a_non_empty_str(front: Front, server: Peer) -> None:
    client = front.connected()
    with pytest.raises(ValueError, match="group"):
        client.subscribe("q", group="")
    with pytest.raises(TypeError):
        client.subscribe("q", group=3)  # type: ignore[arg-type]


def test_patterns_and_groups_are_restored_after_a_reconnect(front: Front, server: Peer) -> None:
    """After the server restarts, the client's patterns and group subscriptions are back."""
    client = front.connected(retries=None)
    got, listener = _pairs()
    client.on("a.*", listener)
    grouped: Recorder[Any] = Recorder()
    client.on("jobs", grouped)
    client.subscribe("a.*")
    client.subscribe("jobs", group="w")
    server.restart()
    wait_until(lambda: client.is_ready and server.topics == {"a.*", "jobs"}, "restored")
    assert server.publish("a.x", 1) == 1
    assert server.publish("jobs", 2) == 1
    assert got.wait_for(1, "pattern listener") == [(1, "a.x")]
    assert grouped.wait_for(1, "group listener") == [2]
