"""The delivery rules without a broker: numbering, duplicates, gaps, a stream's first
messages, and the outbox's bounds."""

from __future__ import annotations

import pytest

from ipc_server.backplane.delivery import Outbox, Sequencer, Tracker


class Interests:
    """This server's interests, by subject, each with the clock it was added at."""

    def __init__(self) -> None:
        self.added: dict[str, int] = {}
        self.clock = 0

    def add(self, tracker: Tracker, subject: str) -> None:
        self.clock += 1
        self.added[subject] = self.clock
        tracker.clock = self.clock

    def remove(self, tracker: Tracker, subject: str) -> None:
        del self.added[subject]
        tracker.removals += 1

    def covered(self, subject: str, since: int) -> bool:
        return subject in self.added and self.added[subject] <= since


def confirmed(tracker: Tracker, interests: Interests) -> None:
    """The broker confirmed every interest so far."""
    tracker.confirmed = interests.clock


@pytest.fixture
def interests() -> Interests:
    return Interests()


@pytest.fixture
def tracker(interests: Interests) -> Tracker:
    return Tracker(100, interests.covered)


def test_sequencer_numbers_each_topic_and_stamps_its_start() -> None:
    sequencer = Sequencer(2)
    first = sequencer.next("a")
    assert first[1:] == (1, 0)
    sequencer.beats = 3
    assert sequencer.next("a") == (first[0], 2, 0)  # the stream began before beat 3
    other = sequencer.next("b")
    assert other[1:] == (1, 3)
    assert other[0] != first[0]
    sequencer.next("c")  # past the limit: "a", the least recently used, is forgotten
    again = sequencer.next("a")
    assert again[1:] == (1, 3)
    assert again[0] not in (first[0], other[0])


def test_holes_and_duplicates(tracker: Tracker, interests: Interests) -> None:
    interests.add(tracker, "s")
    key = ("o", "s")
    assert tracker.accept(key, 7, 1) == 0
    assert tracker.accept(key, 7, 2) == 0
    assert tracker.accept(key, 7, 2) is None
    assert tracker.accept(key, 7, 1) is None
    assert tracker.accept(key, 7, 6) == 3
    assert tracker.accept(key, 8, 1) == 0  # a new epoch starts over


def test_a_hole_while_not_interested_is_no_loss(tracker: Tracker, interests: Interests) -> None:
    interests.add(tracker, "s")
    key = ("o", "s")
    assert tracker.accept(key, 7, 1) == 0
    interests.remove(tracker, "s")
    interests.add(tracker, "s")
    assert tracker.accept(key, 7, 5) == 0


def test_the_first_messages_of_a_stream_count_once_proven(
    tracker: Tracker, interests: Interests
) -> None:
    """A stream first seen past 1 was missed from its start only if this server's
    interest was confirmed before a heartbeat that came before the stream."""
    interests.add(tracker, "s")
    confirmed(tracker, interests)
    key = ("o", "s")
    tracker.heard("o", 1)  # read right after the confirmation: could have raced it
    assert tracker.accept(key, 1, 4, start=1) == 0
    tracker.heard("o", 2)  # a heartbeat later: the interest was there before beat 2
    assert tracker.accept(key, 2, 4, start=1) == 0  # began at beat 1: not proven
    assert tracker.accept(key, 3, 4, start=2) == 3
    assert tracker.accept(key, 4, 5, start=9) == 4  # later streams too
    assert tracker.accept(key, 5, 1, start=9) == 0


def test_a_newer_interest_is_not_proven_by_older_heartbeats(
    tracker: Tracker, interests: Interests
) -> None:
    interests.add(tracker, "old")
    confirmed(tracker, interests)
    tracker.heard("o", 1)
    tracker.heard("o", 2)
    interests.add(tracker, "new")
    confirmed(tracker, interests)
    assert tracker.accept(("o", "new"), 1, 3, start=2) == 0
    assert tracker.accept(("o", "old"), 1, 3, start=2) == 2
    tracker.heard("o", 3)
    assert tracker.accept(("o", "new"), 2, 3, start=3) == 0  # one heartbeat after: racy
    tracker.heard("o", 4)
    assert tracker.accept(("o", "new"), 3, 3, start=4) == 2
    # A stream that began between the first proof and the last is judged by the first.
    assert tracker.accept(("o", "old"), 2, 2, start=3) == 1
    assert tracker.accept(("o", "new"), 4, 2, start=3) == 0


def test_an_unconfirmed_interest_proves_nothing(tracker: Tracker, interests: Interests) -> None:
    interests.add(tracker, "s")  # added while the broker was down: never confirmed
    for beat in range(1, 5):
        tracker.heard("o", beat)
    assert tracker.accept(("o", "s"), 1, 3, start=4) == 0
    assert tracker.accept(("p", "s"), 1, 3, start=4) == 0  # an origin never heard


def test_a_forgotten_stream_is_never_counted_from_its_start(interests: Interests) -> None:
    tracker = Tracker(2, interests.covered)
    for subject in ("a", "b", "c"):
        interests.add(tracker, subject)
    confirmed(tracker, interests)
    tracker.heard("o", 1)
    tracker.heard("o", 2)
    assert tracker.accept(("o", "a"), 1, 1, start=2) == 0
    assert tracker.accept(("o", "a"), 1, 2, start=2) == 0
    assert tracker.accept(("o", "b"), 2, 1, start=2) == 0
    assert tracker.accept(("o", "c"), 3, 1, start=2) == 0  # "a" is forgotten here
    assert tracker.accept(("o", "a"), 1, 3, start=2) == 0  # not 2 missed
    tracker.heard("o", 3)
    assert tracker.accept(("o", "b"), 4, 2, start=3) == 1  # a later stream still counts


def test_an_origin_that_left_is_forgotten(tracker: Tracker, interests: Interests) -> None:
    interests.add(tracker, "s")
    confirmed(tracker, interests)
    tracker.heard("o", 1)
    tracker.heard("o", 2)
    assert tracker.accept(("o", "s"), 1, 1, start=2) == 0
    tracker.forget("o")
    assert len(tracker) == 0
    assert tracker.accept(("o", "s"), 1, 5, start=2) == 0


def test_outbox_bounds() -> None:
    outbox = Outbox(max_bytes=10, max_seconds=1.0)
    outbox.put("s", b"12345", 0.0)
    outbox.put("s", b"67890", 0.5)
    outbox.put("s", b"abc", 0.6)  # pushes the oldest out
    assert (len(outbox), outbox.size, outbox.dropped, outbox.peak) == (2, 8, 1, 10)
    outbox.put("s", b"x" * 11, 0.7)  # never fits
    assert outbox.dropped == 2
    outbox.expire(1.55)  # the one from 0.5 is too old
    assert outbox.pop().payload == b"abc"
    assert not outbox
    assert outbox.removed == 4
