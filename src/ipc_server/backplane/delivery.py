"""The delivery rules of the backplane, without I/O: sequence numbers, gaps, the outbox.

Sequencing is per (origin, topic): a server numbers its publishes to each topic
1, 2, 3, ... within an *epoch*, a number it draws when it starts numbering that
topic (at start, and again if it had to forget the topic's counter). A receiver
subscribed to some topics only sees every number of those topics, so a hole
is a loss, never a message it did not want; per-origin numbering could not
tell the two apart. The receiver keeps, per (origin, topic), the epoch and the
last number seen:

- a number at or below the last: a duplicate (two of its subscriptions matched
  the subject), dropped;
- a number past the next one: ``seq - last - 1`` messages missed, reported as
  a gap, unless this server stopped being interested in the topic in the
  meantime (``Tracker`` asks its owner);
- a new epoch (or a stream it does not know) starting past 1: the numbers
  before it were missed if this server must have had them, else it starts
  there. It must have had them when its interest was at the broker before the
  stream began. Heartbeats say when: each carries the origin's count of
  heartbeats, and each publish the count when its stream began (``start``).
  The origin sent that heartbeat, then the stream, on one connection, in
  order; so if this server's interest was confirmed by the broker before that
  heartbeat arrived, the broker routed the whole stream to it. (Confirmed
  before the heartbeat *before* that one, to leave no race between a
  confirmation and a heartbeat read just ahead of it.)

Both tables are bounded (least recently used streams are forgotten); a
forgotten stream starts again, as a new one does, and is never counted from
its start.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, TypeVar

__all__ = ["Outbox", "Queued", "Sequencer", "Tracker", "runs", "unindex"]

Key = tuple[str, str]
"""A stream: (origin, subject)."""

T = TypeVar("T")


def unindex(index: dict[str, set[T]], name: str, member: T) -> None:
    """Take ``member`` out of ``index[name]``, and ``name`` out once it holds nothing."""
    members = index.get(name)
    if members is not None:
        members.discard(member)
        if not members:
            del index[name]


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
        self.beats = 0
        """Heartbeats this server sent so far (the owner counts them)."""

    def next(self, topic: str) -> tuple[int, int, int]:
        """``(epoch, seq, start)`` for the next publish to ``topic``; ``start`` is
        ``beats`` when the stream began."""
        streams = self._streams
        stream = streams.pop(topic, None)
        if stream is None:
            if len(streams) >= self.limit:
                del streams[next(iter(streams))]
            self._next_epoch += 1
            stream = [self._next_epoch, 0, self.beats]
        stream[1] += 1
        streams[topic] = stream  # last in the dict: the most recently used
        return stream[0], stream[1], stream[2]

    def __len__(self) -> int:
        return len(self._streams)


class Tracker:
    """What a receiving server knows of each stream: drops duplicates, counts gaps.

    Args:
        limit: Streams kept, and origins whose heartbeats are kept; past it
            the least recently updated is forgotten.
        covered: ``covered(subject, since)`` tells whether an interest of this
            server that matches ``subject`` has existed since the interest
            clock read ``since``.

    The owner ticks ``clock`` when it adds an interest, ``removals`` when it
    removes one, and sets ``confirmed`` to the clock the broker confirmed
    last; it calls ``heard`` for each heartbeat.
    """

    def __init__(self, limit: int, covered: Callable[[str, int], bool]) -> None:
        self.limit = limit
        self.covered = covered
        self.clock = 0
        self.removals = 0
        self.confirmed = 0
        # key -> [epoch, last seq, clock at the last message, removals then, start]
        self._streams: dict[Key, list[int]] = {}
        # origin -> [beat, clock] pairs: every message the origin sent after
        # that heartbeat reached the broker after this server's interests up
        # to that clock; the first and the last such pair, then the confirmed
        # clock at the last heartbeat, and the floor: streams that began at or
        # before it may have been forgotten here, so are never counted whole.
        self._heard: dict[str, list[int]] = {}
        # origin -> the subjects of its streams kept: forgetting an origin
        # costs its own streams, never a look at every stream of every origin.
        self._subjects: dict[str, set[str]] = {}

    def heard(self, origin: str, beat: int) -> None:
        """A heartbeat numbered ``beat`` from ``origin``."""
        record = self._record(origin)
        if beat > record[2]:
            proven = record[4]  # confirmed at the heartbeat before: no race
            if record[1] == 0:
                record[0], record[1] = beat, proven
            record[2], record[3] = beat, proven
        record[4] = self.confirmed

    def accept(self, key: Key, epoch: int, seq: int, start: int = -1, count: int = 1) -> int | None:
        """None for a duplicate (drop it); else how many messages of the stream
        were missed just before this one (0 when none). ``start``: the origin's
        heartbeat count when the stream began; ``count``: messages numbered from
        ``seq`` on that came together."""
        streams = self._streams
        stream = streams.pop(key, None)
        if stream is None or stream[0] != epoch:
            if stream is None:
                if len(streams) >= self.limit:
                    old_key = next(iter(streams))
                    record = self._record(old_key[0])
                    record[5] = max(record[5], streams.pop(old_key)[4])
                    unindex(self._subjects, *old_key)
                self._subjects.setdefault(key[0], set()).add(key[1])
            streams[key] = [epoch, seq + count - 1, self.clock, self.removals, start]
            return seq - 1 if seq > 1 and self._whole(key, start) else 0
        streams[key] = stream
        last = stream[1]
        if seq <= last:
            return None
        missed = seq - last - 1
        if missed and stream[3] != self.removals and not self.covered(key[1], stream[2]):
            missed = 0  # not interested all along: the hole is not a loss
        stream[1] = seq + count - 1
        stream[2] = self.clock
        stream[3] = self.removals
        return missed

    def _whole(self, key: Key, start: int) -> bool:
        """Whether this server must have had the stream of ``key`` since its first
        message (it began at the origin's heartbeat ``start``)."""
        record = self._heard.get(key[0])
        if record is None or start <= record[5]:
            return False
        if start >= record[2]:
            since = record[3]
        elif start >= record[0]:
            since = record[1]
        else:
            return False
        return since > 0 and self.covered(key[1], since)

    def _record(self, origin: str) -> list[int]:
        heard = self._heard
        record = heard.pop(origin, None)
        if record is None:
            if len(heard) >= self.limit:
                del heard[next(iter(heard))]
            record = [-1, 0, -1, 0, 0, -1]
        heard[origin] = record
        return record

    def forget(self, origin: str) -> None:
        """Forget the streams and heartbeats of ``origin`` (it left)."""
        streams = self._streams
        for subject in self._subjects.pop(origin, ()):
            del streams[origin, subject]
        self._heard.pop(origin, None)

    def __len__(self) -> int:
        return len(self._streams)


class Queued(NamedTuple):
    """One message waiting in the outbox."""

    subject: str
    body: bytes
    """The message alone, encoded."""
    at: float
    """Loop time it was queued."""
    epoch: int
    seq: int
    start: int
    """The origin's heartbeat count when the stream began (see ``Tracker``)."""
    served: bool
    """This server's worker groups had it already."""


def runs(items: list[Queued], max_bytes: int) -> list[list[Queued]]:
    """``items`` (in queue order) as runs that each go out as one envelope: messages of
    one stream (subject and epoch) with consecutive numbers and the same ``served``,
    at most ``max_bytes`` of bodies (or one message). Each subject's messages stay in
    order, run after run; different subjects may change places."""
    if len(items) == 1:  # the usual case outside bursts: one message, one envelope
        return [items]
    done: list[list[Queued]] = []
    open_runs: dict[str, tuple[list[Queued], int]] = {}
    for item in items:
        current = open_runs.get(item.subject)
        if current is not None:
            run, size = current
            last = run[-1]
            size += len(item.body)
            if (
                item.seq == last.seq + 1
                and item.epoch == last.epoch
                and item.served is last.served
                and size <= max_bytes
            ):
                run.append(item)
                open_runs[item.subject] = (run, size)
                continue
            done.append(run)
        open_runs[item.subject] = ([item], len(item.body))
    done.extend(run for run, _ in open_runs.values())
    return done


class Outbox:
    """Cross-host messages waiting to be handed to the broker, bounded in bytes and age.

    Args:
        max_bytes: Body bytes it holds at most; a message that would pass
            it pushes out the oldest ones.
        max_seconds: Age past which a waiting message is dropped.

    Messages leave from the head, in order: ``expire(now)`` then ``take(n)``.
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

    def put(self, item: Queued) -> None:
        """Queue a message; the oldest ones go if it would not fit."""
        size = len(item.body)
        queue = self._queue
        if size > self.max_bytes:
            self.dropped += 1
            self.removed += 1  # counted as if it had entered and left at once
            return
        while queue and self.size + size > self.max_bytes:
            self._drop()
        queue.append(item)
        self.size += size
        if self.size > self.peak:
            self.peak = self.size

    def expire(self, now: float) -> None:
        """Drop the messages that have waited longer than ``max_seconds``."""
        queue = self._queue
        oldest = now - self.max_seconds
        while queue and queue[0].at < oldest:
            self._drop()

    def take(self, count: int) -> list[Queued]:
        """Up to ``count`` of the oldest messages, oldest first."""
        queue = self._queue
        if len(queue) <= count:  # all of it (one message, outside bursts)
            taken = list(queue)
            queue.clear()
            self.size = 0
        else:
            taken = [queue.popleft() for _ in range(count)]
            self.size -= sum(len(item.body) for item in taken)
        self.removed += len(taken)
        return taken

    def push_back(self, items: list[Queued]) -> None:
        """Put messages that could not be sent back at the head, in this order."""
        self._queue.extendleft(reversed(items))
        self.size += sum(len(item.body) for item in items)
        self.removed -= len(items)

    def _drop(self) -> None:
        item = self._queue.popleft()
        self.size -= len(item.body)
        self.dropped += 1
        self.removed += 1

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)
