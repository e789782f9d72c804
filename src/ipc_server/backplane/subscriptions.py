"""The subscriptions a server keeps on the broker, across connections.

Each one (a topic interest, a service's queue group, or one of the
backplane's own: heartbeats, surveys, replies) is a ``Sub`` that outlives the
connection it is on: after a reconnect ``restore`` puts every ``Sub`` on the
new connection, including those added while it ran.

A subscription can also go deaf while its connection lives: the broker
removes it (a permissions reload does) and says so in a ``-ERR``. Then
``denied`` subscribes it again, with backoff, until a confirmed subscribe
draws no new refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from ..topics import matches
from .link import Link, background, room_to_flush

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["BATCH", "Sub", "Subscriptions", "paced"]

logger = logging.getLogger("ipc_server.backplane")

Handler = Callable[["Msg"], Awaitable[None]]
GroupHandler = Callable[["Msg", "Sub"], Awaitable[None]]
Inline = Callable[["Sub | None", "Msg"], None]
"""Delivers a topic's, a broadcast's (no ``Sub``) or a worker group's message at
once, in nats-py's reader (``Link.subscribe``): must not raise, nor wait."""


T = TypeVar("T")

BATCH = 64
"""Subscriptions made or removed on the broker between two turns of the loop."""


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """``items``, with a turn of the loop for the others every ``BATCH`` (10,000
    subscriptions made in one turn held it for half a second)."""
    for n, item in enumerate(items, 1):
        yield item
        if n % BATCH == 0:
            await asyncio.sleep(0)


def key_of(subject: str, queue: str) -> str:
    """A subscription's key: its subject, and its queue group if any (never in a subject)."""
    return f"{subject} {queue}" if queue else subject


class Sub:
    """One subscription, kept across connections."""

    __slots__ = (
        "added",
        "denied",
        "gen",
        "group",
        "key",
        "kind",
        "name",
        "queue",
        "retrying",
        "sub",
        "subject",
    )

    def __init__(
        self, kind: str, name: str, subject: str, queue: str, added: int, group: str = ""
    ) -> None:
        self.kind = kind
        """``"topic"``, ``"group"`` (a worker group's interest), ``"service"``, or for
        the backplane's own: ``"heartbeat"``, ``"survey"``, ``"replies"``, ``"broadcast"``."""
        self.name = name
        self.group = group
        """The worker group's name (kind ``"group"``)."""
        self.key = key_of(subject, queue)
        self.subject = subject
        self.queue = queue
        self.added = added
        """The interest clock when it was added (topics)."""
        self.gen = 0
        """The connection it is subscribed on (0: none)."""
        self.sub: Subscription | None = None
        self.denied = 0
        """How often the broker removed or refused it."""
        self.retrying = False


class Subscriptions:
    """Every ``Sub`` of one server, by subject.

    Args:
        handlers: The message handler for each kind of ``Sub``.
        limit: nats-py's pending bounds per subscription: messages, bytes.
        group: The handler of worker groups' messages.
        inline: What hands topics', broadcasts' and worker groups' messages on
            at once, when nothing of their subscription waits ahead of them.
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        limit: tuple[int, int],
        group: GroupHandler | None = None,
        inline: Inline | None = None,
    ) -> None:
        self.handlers = handlers
        self.group_handler = group
        self.inline = inline
        self.limit = limit
        self.clock = 0
        """Ticks when an interest is added (see ``delivery.Tracker``)."""
        self.removals = 0
        """Ticks when an interest is removed."""
        self.resubscribed = 0
        self._subs: dict[str, Sub] = {}
        self._wildcards: dict[str, Sub] = {}

    def get(self, subject: str) -> Sub | None:
        return self._subs.get(subject)

    def count(self, kind: str) -> int:
        return sum(1 for sub in self._subs.values() if sub.kind == kind)

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, kind: str, name: str, subject: str, queue: str = "", group: str = "") -> Sub:
        """The ``Sub`` for ``subject`` (in ``queue``), made if new (adding twice is adding once)."""
        key = key_of(subject, queue)
        sub = self._subs.get(key)
        if sub is None:
            if kind == "topic":
                self.clock += 1
            sub = Sub(kind, name, subject, queue, self.clock, group)
            self._subs[key] = sub
            tokens = subject.split(".")
            if kind == "topic" and ("*" in tokens or tokens[-1] == ">"):
                self._wildcards[subject] = sub
        return sub

    async def remove(self, subject: str, kind: str, queue: str = "") -> None:
        """Forget the ``Sub`` of ``kind`` for ``subject`` (in ``queue``) and unsubscribe it."""
        nats_sub = self.detach(subject, kind, queue)
        if nats_sub is not None:
            await unsubscribe(nats_sub)

    def detach(self, subject: str, kind: str, queue: str = "") -> Subscription | None:
        """Forget the ``Sub`` of ``kind`` for ``subject`` (in ``queue``); the broker
        subscription it had, for the caller to unsubscribe."""
        key = key_of(subject, queue)
        sub = self._subs.get(key)
        if sub is None or sub.kind != kind:
            return None
        del self._subs[key]
        self._wildcards.pop(key, None)
        if kind == "topic":
            self.removals += 1
        nats_sub, sub.sub, sub.gen = sub.sub, None, 0
        return nats_sub

    def covered(self, subject: str, since: int) -> bool:
        """Whether an interest matching ``subject`` has existed since clock ``since``."""
        sub = self._subs.get(subject)
        if sub is not None and (sub.kind != "topic" or sub.added <= since):
            return True
        return any(
            w.added <= since and matches(w.subject, subject)  # NATS subjects match as topics do
            for w in self._wildcards.values()
        )

    # -- on a connection ------------------------------------------------------

    async def subscribe(self, sub: Sub, link: Link, gen: int) -> None:
        """Put ``sub`` on connection ``gen`` (unless it is removed meanwhile)."""
        sub.gen = gen  # claimed before the await: no second subscribe meanwhile
        handler = self.handlers.get(sub.kind)
        inline = self.inline
        if handler is None:
            handler = _bound(self.group_handler, sub)
            now = None if inline is None else partial(inline, sub)
        else:
            now = partial(inline, None) if inline and sub.kind in _INLINE else None
        try:
            nats_sub = await link.subscribe(sub.subject, sub.queue, handler, self.limit, now)
        except Exception as exc:
            sub.gen = 0
            logger.debug("subscribe %r: %s", sub.subject, type(exc).__name__)
            return
        if self._subs.get(sub.key) is not sub or sub.gen != gen:
            await unsubscribe(nats_sub)
            return
        sub.sub = nats_sub

    async def restore(self, link: Link, gen: int) -> None:
        """Put every ``Sub`` on connection ``gen``, the backplane's own first."""
        while True:
            todo = [s for s in self._subs.values() if s.gen != gen]
            if not todo:
                return
            todo.sort(key=lambda s: s.kind in ("topic", "group", "service"))
            for sub in todo:
                await self.subscribe(sub, link, gen)
                if not link.connected:
                    return

    def disconnected(self) -> None:
        """The connection is gone, and every subscription with it."""
        for sub in self._subs.values():
            sub.gen, sub.sub = 0, None

    def denied(self, subject: str, link: Link, confirm_timeout: float, backoff: float) -> bool:
        """The broker removed or refused ``subject``; True if it is one of ours and
        not being subscribed again already (it is then, in the background)."""
        sub = self._subs.get(subject)
        if sub is None:  # a queue subscription (a service's, a worker group's)
            sub = next((s for s in self._subs.values() if s.subject == subject), None)
        if sub is None:
            return False
        sub.denied += 1
        if sub.retrying:
            return False  # told already, and being subscribed again
        sub.retrying = True
        background(self._again(sub, link, confirm_timeout, backoff))
        return True

    async def _again(self, sub: Sub, link: Link, confirm_timeout: float, backoff: float) -> None:
        delay = 0.1
        try:
            while self._subs.get(sub.key) is sub and link.connected:
                await asyncio.sleep(delay)
                delay = min(delay * 2, backoff)
                denied, old, gen = sub.denied, sub.sub, sub.gen
                if not gen:
                    return  # off this connection: restore will do it
                sub.gen = 0
                await self.subscribe(sub, link, gen)
                if old is not None:
                    await unsubscribe(old)
                if await link.confirm(confirm_timeout) and sub.denied == denied:
                    self.resubscribed += 1
                    logger.info("subscribed again to %r", sub.subject)
                    return
        finally:
            sub.retrying = False


_INLINE = frozenset({"topic", "broadcast"})
"""The kinds with a handler of their own whose messages ``inline`` delivers too."""


def _bound(handler: GroupHandler | None, sub: Sub) -> Handler:
    """A NATS message handler that hands ``handler`` the ``Sub`` it came by too."""
    if handler is None:
        raise KeyError(f"no handler for subscriptions of kind {sub.kind!r}")

    async def handle(msg: Msg) -> None:
        await handler(msg, sub)

    return handle


async def unsubscribe(sub: Subscription) -> None:
    """Unsubscribe, ignoring a connection that is already gone."""
    try:
        client = getattr(sub, "_conn", None)
        if client is not None:
            await room_to_flush(client)
        await sub.unsubscribe()
    except Exception as exc:
        logger.debug("unsubscribe: %s", type(exc).__name__)
