"""How a broker message reaches its handler: in nats-py's reader, or just behind it.

nats-py gives each subscription an ``asyncio.Queue`` and, with a callback, a
task that takes from it and calls the callback at the next turn of the loop.
For the subscriptions a server has by the thousand (one per topic its clients
follow, one per worker group) that is ~3.6 KiB of queue, event and task
each, and a turn's wait per message. So those are subscribed without a
callback (no task), and their queue is replaced by a ``Lane``: while nothing
of its subscription waits, it hands a message on at once, in the reader, up
to ``INLINE_BATCH`` a turn (``Turn``); else it queues it, under the
subscription's bound (``inbound_limit``: past it nats-py drops the message
and reports a slow consumer, as with its own queue), in the connection's one
``Drain``, whose task delivers everything queued, in arrival order, at the
next turn. A subscription's messages are thus delivered in order, by one
way or the other, never both at once.

What a lane relies on is checked when it is put in place (``adopt``): the
plain queue nats-py made, empty, and the iterator nats-py keeps for a
subscription without a callback. If nats-py ever makes them otherwise, the
subscription is left as it is and read through nats-py's public iterator in
a task (``read_all``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["INLINE_BATCH", "Drain", "Lane", "Turn", "adopt", "read_all"]

logger = logging.getLogger("ipc_server.backplane")

MessageHandler = Callable[["Msg"], Awaitable[None]]
InlineHandler = Callable[["Msg"], None]
"""Hands a message on in nats-py's reader: must not raise, nor wait."""

INLINE_BATCH = 256
"""Messages handed on in nats-py's reader in one turn of the loop; the rest queue."""

_PLAIN_QUEUE = asyncio.Queue
"""The queue nats-py gives a subscription (the only one a ``Lane`` replaces)."""


class Turn:
    """How many messages were handed on in nats-py's reader this turn of the loop."""

    __slots__ = ("_count", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._count = 0

    def take(self) -> bool:
        """Whether one more may be handed on now."""
        count = self._count
        if count >= INLINE_BATCH:
            return False
        if not count:
            self._loop.call_soon(self._reset)
        self._count = count + 1
        return True

    def _reset(self) -> None:
        self._count = 0


class Drain:
    """What queued behind the reader, for every lane of one connection, in
    arrival order; a task delivers all of it at the next turn, then yields."""

    __slots__ = ("_items", "_task")

    def __init__(self) -> None:
        self._items: deque[tuple[Lane, Msg]] = deque()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, lane: Lane, msg: Msg) -> None:
        self._items.append((lane, msg))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Its first step is at the turn after the first push; each step delivers
        # what queued until then, no more (what the reader brings meanwhile
        # waits for the next turn), so a turn's work is bounded by what the
        # reader read.
        items = self._items
        try:
            while True:
                for _ in range(len(items)):
                    lane, msg = items.popleft()
                    try:
                        lane.taken(msg)
                    except Exception:  # a deliverer must not raise; the others go on
                        logger.exception("backplane: delivering a broker message failed")
                if not items:
                    return
                await asyncio.sleep(0)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def stop(self) -> None:
        """The connection is closed: what waits is dropped, as nats-py's tasks drop it."""
        self._items.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None


class Lane:
    """Stands in for nats-py's queue of one subscription (see the module's notes):
    ``put_nowait`` is what nats-py's reader calls; ``qsize`` and ``empty`` what
    it and its ``Subscription`` ask. (nats-py's ``drain()`` and ``next_msg()``
    would take from the queue too; the link uses neither.)"""

    __slots__ = ("_deliver", "_drain", "_limit", "_queued", "_sub", "_turn")

    def __init__(
        self, sub: Subscription, deliver: InlineHandler, turn: Turn, drain: Drain, limit: int
    ) -> None:
        # Not the subscription itself: it holds this lane, and the cycle would
        # leave the subscriptions of a closed connection to the garbage collector
        # (with 10,000 topics that made the next connection's resubscribing
        # take twice as long).
        self._sub = weakref.ref(sub)
        self._deliver = deliver
        self._turn = turn
        self._drain = drain
        self._limit = limit
        self._queued = 0

    def put_nowait(self, msg: Msg) -> None:
        """Hand ``msg`` on, or queue it behind this subscription's others.

        Raises:
            asyncio.QueueFull: ``inbound_limit`` messages wait already (nats-py
                drops this one and reports a slow consumer).
        """
        if not self._queued and self._turn.take():
            sub = self._sub()
            if sub is not None:
                sub._pending_size -= len(msg.data)  # nats-py counted it as pending
            self._deliver(msg)
        elif self._limit > 0 and self._queued >= self._limit:
            raise asyncio.QueueFull
        else:
            self._queued += 1
            self._drain.push(self, msg)

    def taken(self, msg: Msg) -> None:
        """The drain's turn for ``msg``: delivered unless its subscription has
        ended meanwhile (nats-py would have dropped it with its task; what the
        reader brings after an unsubscribe, nats-py drops itself)."""
        self._queued -= 1
        sub = self._sub()
        if sub is None or getattr(sub, "_closed", False):  # there: ``adopt`` checked
            return
        sub._pending_size -= len(msg.data)
        self._deliver(msg)

    def qsize(self) -> int:
        return self._queued

    def empty(self) -> bool:
        return not self._queued


def adopt(sub: Subscription, deliver: InlineHandler, turn: Turn, drain: Drain, limit: int) -> bool:
    """Put a ``Lane`` in place of the queue of ``sub`` (subscribed without a
    callback, no await since); False if nats-py did not make it as expected."""
    queue = getattr(sub, "_pending_queue", None)
    iterator = getattr(sub, "_message_iterator", None)
    if (
        type(queue) is not _PLAIN_QUEUE
        or not queue.empty()
        or getattr(iterator, "_queue", None) is not queue
        or not hasattr(sub, "_pending_size")
        or getattr(sub, "_closed", None) is not False
    ):
        return False
    sub._pending_queue = Lane(sub, deliver, turn, drain, limit)  # type: ignore[assignment]
    # The iterator would keep nats-py's queue (and a future) alive; nothing
    # iterates, and nats-py stops what it has only if it is there.
    sub._message_iterator = None
    return True


async def read_all(sub: Subscription, handler: MessageHandler) -> None:
    """Call ``handler`` for each message of ``sub``, by nats-py's public iterator,
    until it is unsubscribed or its connection closes (a failure is logged, and
    the next message is read: nats-py's own task would report and go on)."""
    async for msg in sub.messages:
        try:
            await handler(msg)
        except Exception:
            logger.exception("backplane: a broker message's handler failed")
