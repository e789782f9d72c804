"""Who is subscribed to what, on a server: the topic registry and its bounds.

I/O-free and generic over the subscriber (the server's connections): the
server asks it whether a subscription may be made (``refusal``: the
``max_topics_per_connection`` and ``max_topic_length`` bounds), makes it,
undoes it, forgets a subscriber that left, and asks who gets a publish.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TopicRegistry"]

S = TypeVar("S", bound=Hashable)


class TopicRegistry(Generic[S]):
    """Topics and their subscribers, in the order they subscribed.

    Args:
        max_per_subscriber: Topics one subscriber may hold (None: no bound).
        max_length: Longest topic, in characters (None: no bound).
    """

    def __init__(self, max_per_subscriber: int | None, max_length: int | None) -> None:
        self.max_per_subscriber = max_per_subscriber
        self.max_length = max_length
        self._subscribers: dict[str, dict[S, None]] = {}
        self._topics: dict[S, set[str]] = {}

    def refusal(self, who: S, topics: list[str]) -> tuple[str, str] | None:
        """Why ``who`` may not subscribe to ``topics``: ``(option, reason)`` of the bound it
        would cross, or None."""
        longest = self.max_length
        if longest is not None:
            for topic in topics:
                if len(topic) > longest:
                    return "max_topic_length", (
                        f"a topic of {len(topic)} characters, over max_topic_length={longest}"
                    )
        most = self.max_per_subscriber
        held = self._topics.get(who, ())
        # A list longer than the bound cannot fit: no set is built for it.
        if most is not None and len(held) + len(topics) > most:
            total = len(set(held).union(topics)) if len(topics) <= most else len(topics)
            if total > most:
                return "max_topics_per_connection", (
                    f"{total} topics, over max_topics_per_connection={most}"
                )
        return None

    def subscribe(self, who: S, topics: list[str]) -> None:
        """``who`` gets what is published to ``topics`` (once each, however often asked)."""
        held = self._topics.setdefault(who, set())
        for topic in topics:
            self._subscribers.setdefault(topic, {})[who] = None
            held.add(topic)

    def unsubscribe(self, who: S, topics: list[str]) -> bool:
        """``who`` leaves ``topics``; True if it was subscribed to any of them."""
        held = self._topics.get(who)
        left = False
        for topic in topics:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None and subscribers.pop(who, 0) is None:
                left = True
                if not subscribers:
                    del self._subscribers[topic]
            if held is not None:
                held.discard(topic)
        return left

    def forget(self, who: S) -> None:
        """``who`` is gone: it leaves every topic."""
        for topic in self._topics.pop(who, ()):
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.pop(who, None)
                if not subscribers:
                    del self._subscribers[topic]

    def subscribers(self, topic: str) -> list[S]:
        """Who gets a message published to ``topic`` (a copy: safe while they change)."""
        subscribers = self._subscribers.get(topic)
        return list(subscribers) if subscribers else []

    def topics_of(self, who: S) -> frozenset[str]:
        """The topics ``who`` is subscribed to."""
        return frozenset(self._topics.get(who, ()))

    def topic_count(self) -> int:
        """How many topics have at least one subscriber."""
        return len(self._subscribers)

    def subscription_count(self) -> int:
        """How many (subscriber, topic) pairs there are."""
        return sum(len(topics) for topics in self._topics.values())

    def snapshot(self) -> dict[str, list[S]]:
        """Each topic with at least one subscriber, and its subscribers."""
        return {topic: list(subs) for topic, subs in self._subscribers.items()}

    def clear(self) -> None:
        self._subscribers.clear()
        self._topics.clear()
