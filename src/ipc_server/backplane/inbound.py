"""What arrives from the broker, on its way to this server's connections.

nats-py's reader hands each broker message (an envelope of one or more of a
server's messages) to the queue of its subscription, which for topics,
broadcasts and worker groups is a lane (``handover``): while nothing of that
subscription waits, it hands the message on here at once, in the reader, up
to ``handover.INLINE_BATCH`` a turn of the loop; delivery only buffers (a
slow client is the output layer's business), so that never stalls the
reader. Past that, or behind what queued, messages wait, bounded by
``inbound_limit`` broker messages and ``inbound_bytes`` bytes a
subscription (past them nats-py drops and reports a slow consumer, counted
by the backplane; this server sees the hole as a gap), and the connection's
drain delivers here, at the next turn, all that queued. The handlers of a
subscription's own task (nats-py's way, kept for when a lane cannot be put
in place) yield to the loop every ``BATCH`` messages, so a burst from the
broker cannot keep the local clients waiting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .serving import Owner
from .wire import read_publish

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .delivery import Tracker
    from .subscriptions import Sub

__all__ = ["BATCH", "Inbound"]

BATCH = 256
"""Messages delivered before the handler yields to the loop."""


class InboundOwner(Owner, Protocol):
    """What ``Inbound`` needs from its backplane, beyond what ``Serving`` does."""

    def event(self, kind: str, info: dict[str, Any]) -> None:
        """Emit the server's ``backplane`` event."""
        ...

    def report(self, exc: BaseException) -> None:
        """Report ``exc`` on the server's ``error`` event."""
        ...


class Inbound:
    """Hands each message from the broker on, past the tracker; tells when to yield.

    Args:
        owner: The backplane.
        tracker: Where sequence numbers are checked.
    """

    def __init__(self, owner: InboundOwner, tracker: Tracker) -> None:
        self._owner = owner
        self._tracker = tracker
        self._own_head = owner.envelopes.head
        self._count = 0

    def put(self, msg: Msg, sub: Sub | None) -> bool:
        """Deliver ``msg`` (that came by worker group subscription ``sub``, if any);
        True when the caller should yield to the loop now."""
        if sub is None:
            self._count += self._take(msg.subject, msg.data)
        else:
            self._count += self._take_group(msg.subject, msg.data, sub)
        if self._count >= BATCH:
            self._count = 0
            return True
        return False

    def _take(self, subject: str, data: bytes) -> int:
        """Deliver the messages of a topic's envelope; how many it held."""
        if data.startswith(self._own_head):
            return 1  # this server's own, back from the broker: not even decoded
        owner = self._owner
        subjects = owner.subjects
        broadcast = subject == subjects.broadcast
        try:
            published = read_publish(data)
            topic = "" if broadcast else subjects.topic_of(subject)
        except ValueError as exc:  # ProtocolError is a ValueError too
            owner.malformed(exc)
            return 1
        origin, messages = published.origin, published.messages
        count = len(messages)
        missed = self._tracker.accept(
            (origin, subject), published.epoch, published.seq, published.start, count
        )
        if missed is None:
            owner.count("duplicates", count)
            return count
        if missed:
            owner.count("gaps")
            owner.count("missed", missed)
            owner.event("gap", {"origin": origin, "topic": topic, "missed": missed})
        owner.count("received", count)
        host = owner.host
        for message in messages:
            try:
                if broadcast:
                    host.deliver_broadcast(message, origin)
                else:
                    host.deliver_remote(topic, message, origin)
            except Exception as exc:
                owner.report(exc)
        return count

    def _take_group(self, subject: str, data: bytes, sub: Sub) -> int:
        """Deliver the messages of a worker group's envelope; how many it held."""
        # The broker chose this server among the group's: this server's own
        # publishes included, unless its groups were served when it published.
        owner = self._owner
        try:
            published = read_publish(data)
            topic = owner.subjects.topic_of(subject)
        except ValueError as exc:
            owner.malformed(exc)
            return 1
        messages = published.messages
        if published.served:
            return len(messages)
        owner.count("received_group", len(messages))
        host = owner.host
        for message in messages:
            try:
                host.deliver_group(topic, sub.name, sub.group, message)
            except Exception as exc:
                owner.report(exc)
        return len(messages)
