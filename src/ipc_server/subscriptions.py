"""A client's subscriptions, without I/O: what it is subscribed to, and the ``subscription()``
queues (both fronts: ``client.py`` and ``sync``).

``Topics`` keeps the topics and patterns the server confirmed (restored after
a reconnect), the worker groups, the ``subscription()`` references and the
wildcard patterns a delivery is matched against; ``Mailbox`` is one
``subscription()``'s FIFO; ``SubscriptionBase`` is a ``subscription()``,
each front adding its waiting.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from .topics import is_pattern

__all__ = ["Mailbox", "Owner", "SubscriptionBase", "Topics"]


class Owner(Protocol):
    """What a subscription needs of its client (``clientcore.ClientCore``)."""

    max_pending_events: int

    def _events_full(self, holder: object, full: bool) -> None: ...


class Mailbox:
    """The messages of one ``subscription()``: a FIFO, bounded or not, and its end.

    The end always fits: a full mailbox drops new messages, but ``end()``
    still ends it, and once its messages are taken it stays ended.
    """

    __slots__ = ("ended", "items", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0, not {maxsize!r}")
        self.maxsize = maxsize
        self.items: deque[Any] = deque()
        self.ended = False

    def put(self, message: Any) -> bool:
        """Add ``message``; False if it was dropped (full, or ended)."""
        if self.ended or (self.maxsize and len(self.items) >= self.maxsize):
            return False
        self.items.append(message)
        return True

    def end(self) -> None:
        """No message will come any more."""
        self.ended = True

    def take(self) -> tuple[bool, Any] | None:
        """``(True, message)``, ``(False, None)`` once ended and empty, or None: wait."""
        if self.items:
            return True, self.items.popleft()
        if self.ended:
            return False, None
        return None


class SubscriptionBase:
    """Messages of one topic (``subscription()``); each front adds the waiting (``_wake``).

    Attributes:
        client: The client it belongs to.
        topic: Its topic.
    """

    def __init__(self, client: Owner, topic: str, maxsize: int = 0) -> None:
        self.client = client
        self.topic = topic
        self.pattern = is_pattern(topic)
        """Whether ``topic`` is a wildcard pattern: then each item is ``(topic, message)``."""
        self._box = Mailbox(maxsize)
        # Without maxsize, max_pending_events bounds it by backpressure instead of by dropping.
        self._limit = client.max_pending_events if not maxsize else 0
        self._full = False

    def _put(self, message: Any) -> None:
        box = self._box
        if box.put(message):
            if self._limit and not self._full and len(box.items) >= self._limit:
                self._full = True
                self.client._events_full(self, True)
            self._wake()

    def _took(self) -> None:
        """A consumer took a message: below the bound again, the client reads on."""
        if self._full and len(self._box.items) < self._limit:
            self._full = False
            self.client._events_full(self, False)

    def _closed(self) -> None:
        """Its ``subscription()`` ended: what it still holds no longer holds the client."""
        if self._full:
            self._full = False
            self.client._events_full(self, False)

    def _end(self) -> None:
        self._box.end()
        self._wake()

    def _wake(self) -> None:
        """A message or the end arrived: wake a consumer waiting for one."""
        raise NotImplementedError


class Topics:
    """What a client is subscribed to, and why.

    Attributes:
        confirmed: Topics (and patterns) the server has confirmed, in order:
            restored after a reconnect.
        grouped: ``(topic, group)`` subscriptions in worker groups the server
            has confirmed: restored too.
        explicit: Topics ``subscribe()`` asked for (kept when a ``subscription()`` ends).
        refs: Live ``subscription()`` contexts per topic.
        streams: The subscriptions that receive each topic's messages (lists
            are replaced, never changed, so a reader may iterate one unlocked).
        patterns: The wildcard patterns among all of these, matched against
            each delivery's topic (a tuple, replaced on change).
    """

    __slots__ = ("confirmed", "explicit", "grouped", "patterns", "refs", "streams")

    def __init__(self) -> None:
        self.confirmed: dict[str, None] = {}
        self.grouped: dict[tuple[str, str], None] = {}
        self.explicit: set[str] = set()
        self.refs: dict[str, int] = {}
        self.streams: dict[str, list[SubscriptionBase]] = {}
        self.patterns: tuple[str, ...] = ()

    def _changed(self) -> None:
        names = [*self.confirmed, *(t for t, _ in self.grouped), *self.streams]
        self.patterns = tuple(dict.fromkeys(t for t in names if is_pattern(t)))

    def subscribed(self, topics: list[str], *, explicit: bool, group: str | None = None) -> None:
        """The server confirmed a subscription to ``topics`` (in worker ``group``)."""
        for t in topics:
            if group is not None:
                self.grouped[t, group] = None
                continue
            self.confirmed[t] = None
            if explicit:
                self.explicit.add(t)
        self._changed()

    def unsubscribed(self, topics: list[str], group: str | None = None) -> None:
        """``unsubscribe()`` was called for ``topics`` (leaving worker ``group``)."""
        for t in topics:
            if group is not None:
                self.grouped.pop((t, group), None)
                continue
            self.confirmed.pop(t, None)
            self.explicit.discard(t)
        self._changed()

    def names(self) -> list[str]:
        """Every topic and pattern subscribed to, plainly or in a group, once each."""
        return list(dict.fromkeys([*self.confirmed, *(t for t, _ in self.grouped)]))

    def restore(self) -> list[tuple[list[str], str | None]]:
        """What to subscribe to again on a new connection: ``(topics, group or None)``."""
        out: list[tuple[list[str], str | None]] = []
        if self.confirmed:
            out.append((list(self.confirmed), None))
        by_group: dict[str, list[str]] = {}
        for topic, group in self.grouped:
            by_group.setdefault(group, []).append(topic)
        out.extend((topics, group) for group, topics in by_group.items())
        return out

    def deliver(self, key: str, item: Any) -> None:
        """Hand ``item`` to every ``subscription()`` of ``key`` (a topic or pattern)."""
        subs = self.streams.get(key)
        if subs:
            for sub in subs:
                sub._put(item)

    def waiting(self) -> int:
        """Messages in the ``subscription()`` mailboxes, not yet taken."""
        return sum(len(sub._box.items) for subs in self.streams.values() for sub in subs)

    def open(self, sub: SubscriptionBase) -> bool:
        """Register a ``subscription()``; True if its topic still needs subscribing.

        Registered before subscribing, so that a message published right
        after the server's answer (even in the same read) reaches it.
        """
        topic = sub.topic
        self.refs[topic] = self.refs.get(topic, 0) + 1
        self.streams[topic] = [*self.streams.get(topic, ()), sub]
        self._changed()
        return topic not in self.confirmed

    def close(self, sub: SubscriptionBase) -> bool:
        """Unregister a ``subscription()``; True if its topic should be unsubscribed now.

        That is when no other ``subscription()`` holds it and ``subscribe()``
        did not ask for it.
        """
        topic = sub.topic
        sub._closed()
        rest = [s for s in self.streams.get(topic, ()) if s is not sub]
        if rest:
            self.streams[topic] = rest
        else:
            self.streams.pop(topic, None)
        count = self.refs.get(topic, 1) - 1
        if count:
            self.refs[topic] = count
            return False
        self.refs.pop(topic, None)
        if topic in self.explicit or topic not in self.confirmed:
            self._changed()
            return False
        del self.confirmed[topic]
        self._changed()
        return True

    def end_all(self) -> None:
        """The client closed for good: every subscription ends."""
        for subs in self.streams.values():
            for sub in subs:
                sub._end()
