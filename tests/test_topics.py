"""The topic registry: pattern rules, matching (against a brute-force model), groups, bounds."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import eventually
from ipc_server import IPCClient, IPCServer
from ipc_server.topics import (
    TopicRegistry,
    check_pattern,
    check_topic,
    is_pattern,
    matches,
    pattern_error,
)

TOPIC_ERROR = "invalid topic|cannot publish"


@pytest.mark.parametrize(
    "pattern", ["a", "a.b", "*", ">", "a.*", "a.>", "*.b", "*.*.>", "chat:room-1", "é.ü"]
)
def test_valid_patterns(pattern: str) -> None:
    assert pattern_error(pattern) is None
    check_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["", ".", "a.", ".a", "a..b", "a.>.b", ">.a", "*x", "a>", "a.b*"]
)
def test_invalid_patterns(pattern: str) -> None:
    assert pattern_error(pattern) is not None
    with pytest.raises(ValueError, match=TOPIC_ERROR):
        check_pattern(pattern)


def test_topics_to_publish() -> None:
    check_topic("orders.new")
    for topic in ("orders.*", ">", "a..b"):
        with pytest.raises(ValueError, match=TOPIC_ERROR):
            check_topic(topic)
    with pytest.raises(TypeError):
        check_topic(3)  # type: ignore[arg-type]
    assert is_pattern("a.*")
    assert is_pattern(">")
    assert not is_pattern("a.b")
    assert not is_pattern("a*")


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders.*", "orders.new", True),
        ("orders.*", "orders.eu.new", False),
        ("orders.*", "orders", False),
        ("orders.>", "orders.new", True),
        ("orders.>", "orders.eu.new", True),
        ("orders.>", "orders", False),
        (">", "x", True),
        (">", "x.y.z", True),
        ("*.b", "a.b", True),
        ("*.b", "a.c", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.b.c", False),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


tokens = st.sampled_from(["a", "b", "c"])
topics = st.lists(tokens, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=4).flatmap(
    lambda ts: st.sampled_from([".".join(ts), ".".join([*ts, ">"]), ".".join([*ts[:-1], ">"])])
)


@settings(max_examples=300, deadline=None)
@given(
    subs=st.lists(st.tuples(st.integers(0, 5), patterns), max_size=25),
    drop=st.lists(st.tuples(st.integers(0, 5), patterns), max_size=10),
    topic=topics,
)
def test_registry_matches_like_the_model(
    subs: list[tuple[int, str]], drop: list[tuple[int, str]], topic: str
) -> None:
    """Whoever the trie finds is whoever holds a pattern that ``matches`` — each once;
    unsubscribing and forgetting leave no trace (the trie is pruned)."""
    registry: TopicRegistry[int] = TopicRegistry(None, None)
    held: set[tuple[int, str]] = set()
    for who, pattern in subs:
        registry.subscribe(who, [pattern])
        held.add((who, pattern))
    for who, pattern in drop:
        registry.unsubscribe(who, [pattern])
        held.discard((who, pattern))
    expected = sorted({who for who, pattern in held if matches(pattern, topic)})
    found = registry.subscribers(topic)
    assert sorted(found) == expected
    assert len(found) == len(set(found))
    for who in range(6):
        registry.forget(who)
    assert registry.subscribers(topic) == []
    assert registry.subscription_count() == 0
    assert registry.topic_count() == 0
    assert registry._root.empty()
    assert not registry._exact
    assert registry._wildcards == 0


def test_groups_round_robin_and_skip_the_ineligible() -> None:
    registry: TopicRegistry[str] = TopicRegistry(None, None)
    for member in ("w1", "w2", "w3"):
        registry.subscribe(member, ["jobs.*"], "pool")
    registry.subscribe("plain", ["jobs.>"])
    picks: Counter[str] = Counter()
    for _ in range(9):
        found = registry.subscribers("jobs.x")
        assert "plain" in found
        assert len(found) == 2
        picks.update(w for w in found if w != "plain")
    assert picks == {"w1": 3, "w2": 3, "w3": 3}
    # A member over its pending bound is skipped while others can take it.
    busy = {"w1", "w2"}
    for _ in range(3):
        assert sorted(registry.subscribers("jobs.x", lambda w: w not in busy)) == ["plain", "w3"]
    # All busy: one is still picked (nothing is dropped).
    assert len(registry.subscribers("jobs.x", lambda w: False)) == 2
    assert registry.groups_of("jobs.*") == {"pool": ["w1", "w2", "w3"]}
    registry.unsubscribe("w1", ["jobs.*"], "pool")
    registry.forget("w2")
    assert registry.groups_of("jobs.*") == {"pool": ["w3"]}
    registry.forget("w3")
    assert registry.groups_of("jobs.*") == {}
    assert registry.subscribers("jobs.x") == ["plain"]


def test_bounds_count_patterns_and_groups() -> None:
    registry: TopicRegistry[str] = TopicRegistry(3, 10)
    assert registry.refusal("c", ["a.*", "b", "c"]) is None
    registry.subscribe("c", ["a.*", "b", "c"])
    assert registry.refusal("c", ["b"]) is None  # held already
    option, _ = registry.refusal("c", ["d"]) or (None, "")
    assert option == "max_topics_per_connection"
    option, _ = registry.refusal("c", ["b"], "g") or (None, "")
    assert option == "max_topics_per_connection"  # a group subscription counts too
    option, _ = registry.refusal("x", ["a" * 11]) or (None, "")
    assert option == "max_topic_length"
    assert registry.refusal("x", ["a..b"]) == (None, "empty token in 'a..b'")


async def test_ten_thousand_patterns_on_one_connection(path: str) -> None:
    """A client holds 10,000 patterns (the default bound); the 10,001st is refused, and a
    publish among them reaches it once."""
    server = IPCServer(path=path)
    errors: list[BaseException] = []
    server.on("error", lambda error, connection: errors.append(error))
    async with server:
        client = await IPCClient(path=path).connect()
        try:
            got: list[tuple[str, str]] = []
            patterns = [f"s{i}.*" for i in range(9_999)] + ["s1.>"]
            assert await client.subscribe(patterns) is True
            client.on("s1.*", lambda m, t: got.append(("s1.*", t)))
            client.on("s1.>", lambda m, t: got.append(("s1.>", t)))
            assert await client.subscribe("one.more") is False
            assert errors
            assert getattr(errors[-1], "option", None) == "max_topics_per_connection"
            assert await server.publish("s1.x", 1) == 1
            await eventually(lambda: len(got) == 2)
            assert sorted(got) == [("s1.*", "s1.x"), ("s1.>", "s1.x")]
            assert await server.publish("s9998.a.b", 1) == 0
        finally:
            await client.close()
        await eventually(lambda: not server.topics)
        assert server._registry._root.empty()


async def test_node_style_publish_to_a_pattern_is_refused(path: str) -> None:
    """A raw pub request naming a pattern (what a Node peer could send) is answered false."""
    async with IPCServer(path=path):
        client = await IPCClient(path=path).connect()
        try:
            assert await client.request({"pub": "a.*", "message": 1}) == {"result": False}
            assert await client.request({"sub": "a..b"}) == {"result": False}
            assert await client.request({"sub": "ok", "group": ""}) == {"result": False}
        finally:
            await client.close()


async def test_server_publish_refuses_patterns(path: str) -> None:
    async with IPCServer(path=path) as server:
        with pytest.raises(ValueError, match=TOPIC_ERROR):
            await server.publish("a.>")
        with pytest.raises(TypeError):
            await server.publish(None)  # type: ignore[arg-type]
        await asyncio.sleep(0)
