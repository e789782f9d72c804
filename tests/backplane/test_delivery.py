"""The delivery rules without a broker: numbering, duplicates, gaps, a stream's first
messages, and the outbox's bounds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipc_server.backplane.delivery import Outbox, Queued, Sequencer, Tracker, runs


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


def queued(subject: str, body: bytes, at: float = 0.0, seq: int = 1, **fields: object) -> Queued:
    values: dict[str, object] = {"epoch": 1, "start": 0, "served": True, **fields}
    return Queued(subject, body, at, seq=seq, **values)  # type: ignore[arg-type]


def test_outbox_bounds() -> None:
    outbox = Outbox(max_bytes=10, max_seconds=1.0)
    outbox.put(queued("s", b"12345", 0.0, 1))
    outbox.put(queued("s", b"67890", 0.5, 2))
    outbox.put(queued("s", b"abc", 0.6, 3))  # pushes the oldest out
    assert (len(outbox), outbox.size, outbox.dropped, outbox.peak) == (2, 8, 1, 10)
    outbox.put(queued("s", b"x" * 11, 0.7, 4))  # never fits
    assert outbox.dropped == 2
    outbox.expire(1.55)  # the one from 0.5 is too old
    assert [item.body for item in outbox.take(5)] == [b"abc"]
    assert not outbox
    assert outbox.removed == 4


def test_outbox_takes_and_puts_back_in_order() -> None:
    outbox = Outbox(max_bytes=100, max_seconds=1.0)
    for seq in range(1, 6):
        outbox.put(queued("s", b"m%d" % seq, seq=seq))
    taken = outbox.take(3)
    assert [item.seq for item in taken] == [1, 2, 3]
    assert (len(outbox), outbox.size, outbox.removed) == (2, 4, 3)
    outbox.push_back(taken[1:])
    assert [item.seq for item in outbox.take(10)] == [2, 3, 4, 5]
    assert (outbox.size, outbox.removed) == (0, 5)  # each left once


def test_runs_group_each_stream_in_order() -> None:
    items = [
        queued("a", b"1", seq=1),
        queued("b", b"1", seq=7),
        queued("a", b"2", seq=2),
        queued("a", b"3", seq=3, served=False),  # served differs: a new run
        queued("b", b"2", seq=8),
        queued("a", b"4", seq=4, served=False),
        queued("a", b"1", seq=1, epoch=2),  # a new epoch: a new run
        queued("b", b"3", seq=10),  # a hole (one was dropped): a new run
    ]
    got = [[(item.subject, item.seq) for item in run] for run in runs(items, 100)]
    assert got == [
        [("a", 1), ("a", 2)],
        [("a", 3), ("a", 4)],
        [("b", 7), ("b", 8)],
        [("a", 1)],
        [("b", 10)],
    ]
    # Each subject's messages keep their order across its runs.
    for subject in ("a", "b"):
        seen = [(i.epoch, i.seq) for run in runs(items, 100) for i in run if i.subject == subject]
        assert seen == [(i.epoch, i.seq) for i in items if i.subject == subject]


def test_runs_are_bounded_in_bytes_but_never_empty() -> None:
    items = [queued("a", b"x" * 40, seq=seq) for seq in range(1, 6)]
    assert [len(run) for run in runs(items, 100)] == [2, 2, 1]
    assert [len(run) for run in runs(items, 10)] == [1] * 5
    assert runs(items[:1], 10) == [items[:1]]  # one message alone: its own run, over budget too


def test_a_run_counts_as_its_messages(tracker: Tracker, interests: Interests) -> None:
    interests.add(tracker, "s")
    key = ("o", "s")
    assert tracker.accept(key, 1, 1, count=3) == 0
    assert tracker.accept(key, 1, 1, count=3) is None  # the same run twice
    assert tracker.accept(key, 1, 4, count=2) == 0
    assert tracker.accept(key, 1, 8, count=1) == 2


def test_heartbeats_are_kept_for_a_bounded_number_of_origins(interests: Interests) -> None:
    """Past ``limit`` origins heard, the least recently heard is forgotten: its streams are
    then never counted from their start (nothing proves them any more)."""
    tracker = Tracker(2, interests.covered)
    interests.add(tracker, "s")
    confirmed(tracker, interests)
    for origin in ("a", "b", "c"):
        tracker.heard(origin, 1)
        tracker.heard(origin, 2)
    assert tracker.accept(("a", "s"), 1, 4, start=2) == 0  # "a" was forgotten
    assert tracker.accept(("c", "s"), 1, 4, start=2) == 3


class Looked(dict[tuple[str, str], list[int]]):
    """A dict that counts how often it was gone through whole."""

    walks = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        Looked.walks += 1
        return super().__iter__()


def test_forgetting_an_origin_costs_its_own_streams(interests: Interests) -> None:
    """An origin's goodbye (which any publisher in the namespace can say, as often as it
    likes) forgets its streams without going through every stream kept, also after
    streams were forgotten past the bound."""
    tracker = Tracker(1000, interests.covered)
    for n in range(1500):  # 500 forgotten, least recently used first
        assert tracker.accept((f"o{n % 10}", f"s{n}"), 1, 1) == 0
    tracker._streams = Looked(tracker._streams)
    for n in range(100):
        tracker.forget(f"nobody{n}")
    tracker.forget("o3")
    assert Looked.walks == 0
    assert len(tracker) == 900
    assert all(origin != "o3" for origin, _ in tracker._streams)
    assert tracker.accept(("o3", "s3"), 1, 7) == 0  # a new stream: nothing counted
    assert tracker.accept(("o4", "s1004"), 1, 2) == 0  # kept: the next number
