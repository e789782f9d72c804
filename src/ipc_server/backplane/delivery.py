"""The delivery rules of the backplane, without I/O: sequence numbers, gaps, the outbox.

Sequencing is per (origin, topic): a server numbers its publishes to each topic
1, 2, 3, ... within an *epoch*, a number it draws when it starts numbering that
topic (at start, and again if it had to forget the topic's counter). A receiver
subscribed to some topics only sees every number of those topics, so a hole
is a loss, never a message it did not want; per-origin numbering could not
tell the two apart. The receiver keeps, per (origin, topic), the epoch and the
last number seen:

- a new epoch (or a stream it does not know): start there, nothing missed;
- a number at or below the last: a duplicate (two of its subscriptions matched
  the subject), dropped;
- a number past the next one: ``seq - last - 1`` messages missed, reported as
  a gap, unless this server stopped being interested in the topic in the
  meantime (``Tracker`` asks its owner).

Both tables are bounded (least recently used streams are forgotten); a
forgotten stream starts again, as a new one does.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

__all__ = ["Outbox", "Queued", "Sequencer", "Tracker"]

K = TypeVar("K")


class Sequencer:
    """The numbers this server stamps on its publishes: ``(epoch, seq)`` per topic.

    Args:
        limit: Topics whose counters are kept; past it the least recently
            used one is forgotten (its next publish starts a new epoch).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Epochs only need to differ between this server's runs and streams:
        # a random base in the high bits, a counter in the low ones.
        self._next_epoch = random.getrandbits(30) << 32
        self._streams: dict[str, list[int]] = {}

    def next(self, topic: str) -> tuple[int, int]:
        """``(epoch, seq)`` for the next publish to ``topic``."""
        streams = self._streams
        stream = streams.pop(topic, None)
        if stream is None:
            if len(streams) >= self.limit:
                del streams[next(iter(streams))]
            self._next_epoch += 1
            stream = [self._next_epoch, 0]
        stream[1] += 1
        streams[topic] = stream  # last in the dict: the most recently used
        return stream[0], stream[1]

    def __len__(self) -> int:
        return len(self._streams)


class Tracker(Generic[K]):
    """What a receiving server knows of each stream: drops duplicates, counts gaps.

    Args:
        limit: Streams kept; past it the least recently updated is forgotten.
        covered: ``covered(key, since)`` tells whether an interest of this
            server that matches the stream's subject has existed since the
            interest clock read ``since``. Asked only when a hole is seen
            after an interest was removed.

    The owner ticks ``clock`` when it adds an interest and ``removals`` when
    it removes one; a hole with no removal since the last message is a loss.
    """

    def __init__(self, limit: int, covered: Callable[[K, int], bool]) -> None:
        self.limit = limit
        self.covered = covered
        self.clock = 0
        self.removals = 0
        # key -> [epoch, last seq, clock at the last message, removals then]
        self._streams: dict[K, list[int]] = {}

    def accept(self, key: K, epoch: int, seq: int) -> int | None:
        """None for a duplicate (drop it); else how many messages of the stream
        were missed just before this one (0 when none)."""
        streams = self._streams
        stream = streams.pop(key, None)
        if stream is None or stream[0] != epoch:
            if stream is None and len(streams) >= self.limit:
                del streams[next(iter(streams))]
            streams[key] = [epoch, seq, self.clock, self.removals]
            return 0
        streams[key] = stream
        last = stream[1]
        if seq <= last:
            return None
        missed = seq - last - 1
        if missed and stream[3] != self.removals and not self.covered(key, stream[2]):
            missed = 0  # not interested all along: the hole is not a loss
        stream[1] = seq
        stream[2] = self.clock
        stream[3] = self.removals
        return missed

    def forget(self, match: Callable[[K], bool]) -> None:
        """Forget the streams whose key satisfies ``match`` (an origin that left)."""
        for key in [key for key in self._streams if match(key)]:
            del self._streams[key]

    def __len__(self) -> int:
        return len(self._streams)


class Queued(NamedTuple):
    """One message waiting in the outbox."""

    subject: str
    payload: bytes
    at: float
    """Loop time it was queued."""


class Outbox:
    """Cross-host messages waiting to be handed to the broker, bounded in bytes and age.

    Args:
        max_bytes: Payload bytes it holds at most; a message that would pass
            it pushes out the oldest ones.
        max_seconds: Age past which a waiting message is dropped.

    Messages leave from the head, in order: ``expire(now)`` then ``pop()``.
    Every message dropped is counted in ``dropped``.
    """

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.size = 0
        self.dropped = 0
        self.peak = 0
        """The most bytes it ever held."""
        self.removed = 0
        """How many messages left it, sent or dropped (a position in its stream)."""
        self._queue: deque[Queued] = deque()

    def put(self, subject: str, payload: bytes, now: float) -> None:
        """Queue a message; the oldest ones go if it would not fit."""
        size = len(payload)
        queue = self._queue
        if size > self.max_bytes:
            self.dropped += 1
            self.removed += 1  # counted as if it had entered and left at once
            return
        while queue and self.size + size > self.max_bytes:
            self._drop()
        queue.append(Queued(subject, payload, now))
        self.size += size
        if self.size > self.peak:
            self.peak = self.size

    def expire(self, now: float) -> None:
        """Drop the messages that have waited longer than ``max_seconds``."""
        queue = self._queue
        oldest = now - self.max_seconds
        while queue and queue[0].at < oldest:
            self._drop()

    def pop(self) -> Queued:
        """The oldest message (``IndexError`` when empty)."""
        item = self._queue.popleft()
        self.size -= len(item.payload)
        self.removed += 1
        return item

    def push_back(self, item: Queued) -> None:
        """Put a message that could not be sent back at the head."""
        self._queue.appendleft(item)
        self.size += len(item.payload)
        self.removed -= 1

    def _drop(self) -> None:
        item = self._queue.popleft()
        self.size -= len(item.payload)
        self.dropped += 1
        self.removed += 1

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)
