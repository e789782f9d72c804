"""The backplane's way out: each message published here, to the broker.

``Sender`` is a mixin of ``nats.NatsBackplane``. A message that crosses
hosts is encoded and numbered at once (``_queue``). The first of a turn of
the loop, if nothing waits ahead of it (the broker is up, the outbox empty,
the sender task idle), is handed to nats-py right away (``_send_now``):
nats-py only queues its bytes for its writer task, so that costs no wait,
and saves the round trip a wake-up of the sender task on each server it
crosses. The others wait in the outbox, and the sender task hands it to the
broker at the next turn, each run of one stream as one envelope (``runs``),
so a burst still leaves in few envelopes; while the broker is down the
outbox is bounded (``Outbox``). Order holds either way: a message leaves at
once only when nothing is queued or being sent before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..errors import MessageTooLargeError
from .delivery import Outbox, Queued, Sequencer, runs
from .link import Link
from .wire import Envelopes

__all__ = ["Sender"]

_BATCH = 256  # messages handed over before yielding to the loop
_RUN_BYTES = 64 << 10  # message bytes sent together in one envelope at most


class Sender:
    """Queue, number and send what this server publishes across hosts (a mixin)."""

    # Set by the backplane that inherits this (nats.NatsBackplane).
    _outbox: Outbox
    _sequencer: Sequencer
    _envelopes: Envelopes
    _counts: dict[str, int]
    _loop: asyncio.AbstractEventLoop
    _wake_sender: asyncio.Event
    _link: Link | None
    _barrier: list[asyncio.Future[bool]]
    _state: str
    _sending: bool
    _max_payload: int
    _confirm_timeout: float
    _idle = False  # the sender task waits for work: a message may leave at once...
    _held = False  # ...unless one left at once this turn of the loop (the rest go together)
    _stalled: tuple[Link, Awaitable[None]] | None = None  # begun at once, still to finish

    if TYPE_CHECKING:

        def report(self, exc: BaseException) -> None: ...
        def _check_up(self) -> None: ...
        async def _confirm(self, link: Link, timeout: float) -> bool: ...

    def _queue(self, topic: str, subject: str, message: Any, groups: bool) -> bool:
        envelopes = self._envelopes
        try:
            body = envelopes.body(message)
        except (TypeError, ValueError, OverflowError) as exc:
            what = f"on topic {topic[:80]!r}" if topic else "broadcast"
            self._refuse(TypeError(f"a message {what} cannot cross hosts: {exc}"))
            return False
        size = len(body) + envelopes.overhead  # the subject is not in the payload
        if size > self._max_payload:
            self._refuse(
                MessageTooLargeError(
                    size, self._max_payload, "cross-host message", option="max_payload"
                )
            )
            return False
        epoch, seq, start = self._sequencer.next(topic)
        item = Queued(subject, body, self._loop.time(), epoch, seq, start, not groups)
        if (
            self._idle
            and not self._held
            and self._state == "up"
            and not self._outbox
            and not self._barrier
        ):
            self._send_now(item)  # nothing is ahead of it
        else:
            self._outbox.put(item)
            if self._sending:
                self._wake_sender.set()
        return True

    def _send_now(self, item: Queued) -> None:
        link = self._link
        assert link is not None  # the state is "up"
        payload = self._envelopes.publish(
            item.epoch, item.seq, [item.body], item.served, item.start
        )
        try:
            rest = link.publish_now(item.subject, payload)
        except Exception as exc:
            if self._lost(link, exc):
                self._outbox.put(item)  # it goes first when the broker is back
            return
        if rest is None:
            self._counts["published"] += 1
            self._held = True  # what follows in this turn waits for the sender, as one run
            self._loop.call_soon(self._release)
        else:  # nats-py waits for room: the sender finishes it before anything else
            self._idle = False
            self._stalled = (link, rest)
            self._wake_sender.set()

    def _release(self) -> None:
        self._held = False

    def _lost(self, link: Link, exc: Exception) -> bool:
        """After a failed publish: whether the connection is lost (then it is dropped),
        or else the broker refused that message (reported; the receivers see the hole)."""
        if link.connected:  # refused (a broker with a smaller max_payload)
            self._refuse(exc)
            return False
        link.drop("the broker connection closed while sending")
        return True

    def _refuse(self, exc: BaseException) -> None:
        self._counts["refused"] += 1
        self.report(exc)

    async def _send(self) -> None:
        outbox = self._outbox
        counts = self._counts
        loop = self._loop
        while True:
            self._idle = True
            await self._wake_sender.wait()
            self._idle = False
            self._wake_sender.clear()
            stalled, self._stalled = self._stalled, None
            if stalled is not None:
                await self._finish(stalled)
            while self._sending:
                link = self._link
                if link is None:
                    break
                if self._barrier:
                    waiters, self._barrier = self._barrier, []
                    ok = await self._confirm(link, self._confirm_timeout)
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(ok)
                    continue
                outbox.expire(loop.time())
                sent = await self._send_some(link)
                counts["published"] += sent
                self._check_up()
                if not outbox and not self._barrier:
                    break
                await asyncio.sleep(0)

    async def _send_some(self, link: Link) -> int:
        """Hand up to ``_BATCH`` messages from the outbox to the broker, each run of
        one stream as one envelope; how many were written."""
        envelopes = self._envelopes
        budget = min(self._max_payload, _RUN_BYTES) - envelopes.overhead
        batches = runs(self._outbox.take(_BATCH), budget)
        sent = 0
        for i, run in enumerate(batches):
            first = run[0]
            bodies = [item.body for item in run]
            payload = envelopes.publish(first.epoch, first.seq, bodies, first.served, first.start)
            try:
                await link.publish(first.subject, payload)
            except Exception as exc:
                if not self._lost(link, exc):
                    continue
                self._outbox.push_back([item for left in batches[i:] for item in left])
                break
            sent += len(run)
        return sent

    async def _finish(self, stalled: tuple[Link, Awaitable[None]]) -> None:
        """Finish a publish ``_send_now`` began (its message is past the outbox)."""
        link, rest = stalled
        try:
            await rest
        except Exception as exc:
            self._lost(link, exc)  # not sent again: nats-py had its bytes already
            return
        self._counts["published"] += 1
