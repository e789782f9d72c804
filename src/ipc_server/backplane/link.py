"""One connection to the NATS broker, and the few things the backplane asks of it.

The backplane owns its reconnects: each connection is a fresh nats-py client
with nats-py's own reconnection off, so that after a loss *this* library
resubscribes every interest, confirms the broker has them, flushes its outbox
and only then says "up" (a client that reconnects by itself and replays its
subscriptions in the background is how adapters go deaf). The link knows the
dial options, the subscription confirmation and the liveness probe.

Subscription confirmation: nats-py 2.16 writes a ``flush()``'s PING straight
to the socket while a SUB may still sit in its own pending buffer, so
subscribe + flush can get its PONG before the broker has the SUB. ``confirm``
first waits until the pending buffer is empty (the SUB's bytes have been handed
to the socket), then flushes: the broker answers a connection's PING only
after everything that came before it on that connection, so the PONG proves
the subscription is in place.

PINGs (``confirm``, ``probe``): nats-py's ``flush(timeout)`` leaves the future
of a PING it gave up on in its queue of PINGs to answer, and the late PONG
then makes its reader stop for good (setting a result on that cancelled
future raises, and the reader ends on any unexpected error): a connection
that looks alive and hears nothing until nats-py's own PINGs go unanswered
twice (its flush returns at once from then on). So nats-py is never given a
timeout that can pass while the connection lives: each PING waits in a task
of its own for as long as the connection does, and the caller stops waiting
at its own bound without cancelling it.

The way in and out: nats-py hands each message from its reader to a
subscription's queue, and a task per subscription calls its handler at the
next turn of the loop; each publish queues its bytes for a writer task that
writes them at the next turn. A message crossing hosts would wait for two of
those turns on the way out and in of each server it passes. So, for the
messages that matter (topics, broadcasts, worker groups), the subscription
has no task and its queue is a lane that hands a message on in the reader
itself while nothing of that subscription waits (``handover``), and a
publish is written straight to the socket when nothing is queued or unsent
ahead of it (else nats-py's way). Both fall back to nats-py's own path
whenever what they rely on is not as expected (another transport, a queue of
another shape), so order and bounds never depend on them. On asyncio's own
loop, each read of the socket asks for less than the default
(``_read_less``): what it asks for is allocated before the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..protocol import FRESH_READ_SIZE
from . import handover
from .handover import InlineHandler, MessageHandler

if TYPE_CHECKING:
    import ssl

    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

__all__ = ["Credentials", "Link", "background", "cancel_all", "nats_available", "room_to_flush"]

logger = logging.getLogger("ipc_server.backplane")


_BACKGROUND: set[asyncio.Task[Any]] = set()


def background(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` in a task nobody awaits (kept until done, so not collected)."""
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def nats_available() -> bool:
    """Whether nats-py can be imported."""
    import importlib.util

    return importlib.util.find_spec("nats") is not None


class Credentials:
    """The secrets a connection presents; never shown (``repr`` says which kinds are set)."""

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        self._values = {k: v for k, v in values.items() if v is not None}

    def options(self) -> dict[str, Any]:
        """nats-py connect options for these credentials."""
        values = self._values
        options: dict[str, Any] = {}
        for key in ("user", "password", "token"):
            if key in values:
                options[key] = values[key]
        seed = values.get("nkeys_seed")
        if seed is not None:
            seed = os.fspath(seed)
            # A user seed starts with "SU"; anything else is a path to a seed file.
            if seed.startswith("SU") and not os.path.exists(seed):
                options["nkeys_seed_str"] = seed
            else:
                options["nkeys_seed"] = seed
        if "creds_file" in values:
            options["user_credentials"] = os.fspath(values["creds_file"])
        return options

    def __repr__(self) -> str:
        kinds = ", ".join(sorted(self._values)) or "none"
        return f"<credentials: {kinds}>"


class Link:
    """A live nats-py client and what it was dialled with.

    Args:
        client: The connected client.
        url: The server it connected to, credentials removed.
        lost: Set when the connection is gone (nats-py's callbacks, the
            liveness probe, or the owner giving up on it).
    """

    def __init__(self, client: Client, url: str, lost: asyncio.Event) -> None:
        self.client = client
        self.url = url
        self.lost = lost
        self.reason = "the broker connection was lost"
        self._pings: set[asyncio.Task[Any]] = set()
        self._heard = 0  # nats-py's count of messages read, at the probe's last look
        self._turn = handover.Turn(asyncio.get_running_loop())
        self._drain = handover.Drain()  # what queued behind the reader, for every lane
        # Once connected: the socket's asyncio transport (``_socket_of``) and
        # nats-py's PUB command builder, to write a publish straight to it.
        self._direct: tuple[Any, Callable[[str, str, bytes], bytes]] | None = None
        self._room = _room_of(client)  # again once connected: nats-py sets it then

    @classmethod
    async def dial(
        cls,
        url: str,
        shown: str,
        *,
        name: str,
        ssl_context: ssl.SSLContext | None,
        credentials: Credentials,
        connect_timeout: float,
        ping_interval: float,
        pending_size: int,
        on_error: Callable[[Link, Exception], None],
    ) -> Link:
        """Connect to ``url`` once (no retry: the caller backs off and tries again).

        Raises:
            Exception: What nats-py raised (``OSError``, ``TimeoutError``,
                ``nats.errors.Error`` for a refusal or a TLS failure).
        """
        from nats.aio.client import Client

        client = Client()
        lost = asyncio.Event()
        link = cls(client, shown, lost)

        async def gone() -> None:
            if not lost.is_set():
                cause = client.last_error
                if cause is not None:
                    link.reason = f"the broker connection was lost ({type(cause).__name__})"
                lost.set()

        async def error(exc: Exception) -> None:
            on_error(link, exc)

        options: dict[str, Any] = {
            "servers": [url],
            "name": name,
            "allow_reconnect": False,
            # nats-py retries a refused TCP connect inside connect() whatever
            # allow_reconnect says; this bounds that to one immediate retry.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "connect_timeout": connect_timeout,
            # nats-py's default is one ping per 2 minutes; the link probes too.
            "ping_interval": ping_interval,
            "max_outstanding_pings": 2,
            # A publish past pending_size waits for nats-py's writer; without a
            # bound it waits forever if the connection closes meanwhile (the
            # writer is cancelled, the wait is never released), and so would
            # the backplane's sender. Past it, the bytes stay queued and the
            # publish returns; a dead connection is the probe's to find.
            "flush_timeout": 2 * ping_interval,
            # A server's own publishes come back: its worker groups' queue
            # subscriptions must be candidates too (the broker picks among all
            # members); the other copies are dropped by their origin.
            "no_echo": False,
            # Subjects are built and checked by the backplane (subjects.py).
            "skip_subject_validation": True,
            "pending_size": pending_size,
            "error_cb": error,
            "disconnected_cb": gone,
            "closed_cb": gone,
            **credentials.options(),
        }
        if ssl_context is not None:
            options["tls"] = ssl_context
        try:
            await asyncio.wait_for(client.connect(**options), timeout=connect_timeout * 2 + 1)
        except BaseException as exc:
            # A refused or timed-out attempt may leave its socket open.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=1.0)
            cause = client.last_error
            if isinstance(exc, Exception) and cause is not None and cause is not exc:
                raise cause from exc  # "no servers" says less than why the last one failed
            raise
        from nats.protocol.command import pub_cmd

        link._room = _room_of(client)
        socket = _socket_of(client)
        if socket is not None:
            link._direct = (socket, pub_cmd)
            _read_less(socket)
        return link

    @property
    def connected(self) -> bool:
        return not self.lost.is_set() and self.client.is_connected

    @property
    def max_payload(self) -> int:
        return self.client.max_payload

    def drop(self, reason: str) -> None:
        """Give up on this connection: the owner's session ends."""
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    async def subscribe(
        self,
        subject: str,
        queue: str,
        handler: MessageHandler,
        limit: tuple[int, int],
        inline: InlineHandler | None = None,
    ) -> Subscription:
        """Subscribe ``handler`` (nats-py's way: a task calls it for each message);
        with ``inline``, no task: each message is handed to ``inline``, in
        nats-py's reader or just behind it (``handover``), in order."""
        await room_to_flush(self.client)
        if not self.connected:
            raise ConnectionError(self.reason)
        if inline is None:
            return await self.client.subscribe(
                subject,
                queue=queue,
                cb=handler,
                pending_msgs_limit=limit[0],
                pending_bytes_limit=limit[1],
            )
        sub = await self.client.subscribe(
            subject, queue=queue, pending_msgs_limit=limit[0], pending_bytes_limit=limit[1]
        )
        # Before any message can arrive: nothing awaited since it was made.
        if not handover.adopt(sub, inline, self._turn, self._drain, limit[0]):
            background(handover.read_all(sub, handler))
        return sub

    def publish(self, subject: str, payload: bytes, reply: str = "") -> Awaitable[None]:
        """Hand ``payload`` to the broker on ``subject``; await it (nats-py's own
        coroutine, not one wrapped around it: this is once per message)."""
        return self.client.publish(subject, payload, reply=reply)

    def publish_now(self, subject: str, payload: bytes) -> Awaitable[None] | None:
        """``publish``, begun here and now: None if that finished it, as it nearly
        always does (nats-py only queues the bytes for its writer task); else an
        awaitable that finishes it (nats-py waits for room in its buffer). Saves
        the sender's task a wake-up per message when nothing waits ahead of it;
        and when nothing is unsent ahead of it either, it is written to the
        socket here (saving nats-py's writer task one too).

        Raises:
            Exception: What nats-py's publish raises when it begins.
        """
        client = self.client
        direct = self._direct
        if (
            direct is not None
            and not client.pending_data_size  # nothing of nats-py's waits ahead of it
            and not direct[0].get_write_buffer_size()
            and client.is_connected
            and not direct[0].is_closing()
            and len(payload) <= client.max_payload
        ):
            direct[0].write(direct[1](subject, "", payload))
            stats = client.stats
            stats["out_msgs"] += 1
            stats["out_bytes"] += len(payload)
            return None
        coro = client.publish(subject, payload)
        # Past its buffer's bound nats-py waits for its writer under asyncio.timeout,
        # which binds to the task that begins the wait (Python 3.12+) and cancels
        # it at the deadline: not this caller's, so such a publish is begun by the
        # task that finishes it. (The PUB line: the subject, ASCII, and < 32 bytes.)
        room = self._room
        if room is None or client.pending_data_size + len(payload) + len(subject) + 32 > room:
            return _resume(coro, None)
        try:
            paused = coro.send(None)
        except StopIteration:
            return None
        return _resume(coro, paused)

    async def confirm(self, timeout: float) -> bool:
        """True once the broker has processed everything sent before this call
        (subscriptions included); False after ``timeout`` or on a lost connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = self.client
        spins = 0
        while client.pending_data_size > 0:
            if not self.connected or loop.time() > deadline:
                return False
            spins += 1
            await asyncio.sleep(0 if spins < 64 else 0.001)
        return await self.probe(max(deadline - loop.time(), 0.001))

    async def probe(self, timeout: float, behind: float = 0.0) -> bool:
        """One round trip to the broker (a PING); False if it is not answered in time
        (the PING is still answered later, harmlessly: see the module's notes).

        With ``behind``, an answer not in within ``timeout`` is waited for up to
        ``behind`` in all for as long as messages keep coming (one in each half
        of ``timeout`` at least): its PONG is queued behind them, and a server
        catching up on a burst is not deaf. While they come, nats-py's own
        count of unanswered PINGs starts over, for the same reason (looked at
        as the probe begins and each quarter of ``timeout``, more often than
        nats-py's PINGs go out). Time this loop was held up (a quarter of
        ``timeout`` that took more than twice as long) counts as no more
        than twice its quarter: the answer may be read but not yet handled."""
        client = self.client
        ping = asyncio.ensure_future(client.flush(timeout=_PING_PATIENCE))
        self._pings.add(ping)
        ping.add_done_callback(_settled)
        ping.add_done_callback(self._pings.discard)
        loop = asyncio.get_running_loop()
        step = timeout / 4
        began = loop.time()
        listened = heard = 0.0  # time this loop could have heard an answer; at the last message
        hearing = behind > 0 and self._hearing()
        while True:
            if hearing and isinstance(getattr(client, "_pings_outstanding", None), int):
                client._pings_outstanding = 0
            then = loop.time()
            done, _ = await asyncio.wait((ping,), timeout=step)
            if done:
                return not ping.cancelled() and ping.exception() is None
            now = loop.time()
            # A step that took far longer than asked was this loop held up (by
            # other work, or the process stopped): not listening, not silence.
            listened += min(now - then, 2 * step)
            hearing = behind > 0 and self._hearing()
            if hearing:
                heard = listened
            if listened >= timeout and (
                listened - heard >= timeout / 2 or now - began >= behind or not self.connected
            ):
                return False

    def _hearing(self) -> bool:
        """Whether nats-py has read a message since the last look."""
        stats = getattr(self.client, "stats", None)
        count = stats.get("in_msgs", 0) if isinstance(stats, dict) else 0
        before, self._heard = self._heard, count
        return isinstance(count, int) and count != before

    async def close(self, timeout: float = 2.0) -> None:
        """Close the client, waiting at most ``timeout`` (a dead peer can stall a drain)."""
        self.lost.set()
        self._drain.stop()
        for ping in list(self._pings):  # no PONG comes on a closed connection
            ping.cancel()
        try:
            await asyncio.wait_for(self.client.close(), timeout=timeout)
        except Exception as exc:  # the socket goes with the client; nothing else to do
            logger.debug("closing the broker connection: %s", type(exc).__name__)


async def room_to_flush(client: Client) -> None:
    """Wait until nats-py's queue of flush requests is at most half full, or
    ``client`` is no longer connected.

    Each subscribe and unsubscribe puts a request in it for nats-py's writer
    task, and a put into a full queue waits for that task; when the
    connection closes meanwhile nats-py stops the task and leaves those
    waiting for ever (10,000 topics subscribed at once as the link was
    dropped: the subscribe was never answered). So nothing is left to wait in
    nats-py: a full queue is waited out here a turn of the loop at a time
    (the writer empties it in one).
    """
    queue = getattr(client, "_flush_queue", None)
    if not isinstance(queue, asyncio.Queue) or queue.maxsize <= 0:
        return
    while queue.qsize() >= queue.maxsize // 2 and client.is_connected:  # noqa: ASYNC110 (no event for it)
        await asyncio.sleep(0)


def _room_of(client: Client) -> int | None:
    """nats-py's bound of its buffer (None if unknown: then no publish begins in
    the caller's task, see ``Link.publish_now``)."""
    size = getattr(client, "_max_pending_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _socket_of(client: Client) -> Any:
    """The asyncio transport under nats-py's plain or TLS TCP connection, if that is
    what it has (its ``Transport`` wraps a stream writer); else None. (uvloop's
    transports are not ``asyncio.WriteTransport`` subclasses: asked by duck.)"""
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    socket = getattr(writer, "transport", None)
    if not all(
        callable(getattr(socket, name, None))
        for name in ("write", "get_write_buffer_size", "is_closing")
    ):
        return None
    return socket


READ_SIZE = FRESH_READ_SIZE
"""The most one read of nats-py's socket asks for (asyncio's plain transports: 256 KiB)."""


def _read_less(socket: Any) -> None:
    """Have asyncio's plain TCP transport under nats-py read at most ``READ_SIZE``.

    It allocates what it asks for before each read: 256 KiB is past glibc's
    threshold for mapping memory of its own, so every read maps a fresh
    region, touches it, shrinks and unmaps it (three more system calls and
    a page fault, ~12 µs a read on the machine of docs/backplane.md, for a
    message of 300 bytes). 64 KiB comes from the heap. uvloop and TLS transports
    read into buffers of their own and have no such attribute: left alone.
    """
    size = getattr(socket, "max_size", None)
    if type(size) is int and size > READ_SIZE:
        socket.max_size = READ_SIZE


_PING_PATIENCE = 24 * 3600
"""nats-py's own bound on a PING: longer than any connection waits for one (see above)."""


def _settled(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: its caller may have stopped waiting


async def _resume(coro: Coroutine[Any, Any, None], paused: Any) -> None:
    """Go on with ``coro``, paused on ``paused`` (what it yielded), as its task would:
    each time what it waits for is done, resume it, until it returns or raises. A
    cancellation of the task running this is thrown into ``coro``, as a task does
    (``asyncio.timeout`` inside it cancels that task, and expects it so)."""
    while True:
        try:
            if paused is None:  # a bare yield: run again at the next turn
                await asyncio.sleep(0)
            else:
                await asyncio.wait((paused,))
        except asyncio.CancelledError as exc:
            if paused is not None:
                paused.cancel()
            try:
                paused = coro.throw(exc)  # raises it again unless ``coro`` handles it
            except StopIteration:
                return
            continue
        try:
            paused = coro.send(None)
        except StopIteration:
            return


async def cancel_all(tasks: list[asyncio.Task[Any]], patience: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again what is still running (a
    library below may swallow one cancellation while it dials): never waits forever."""
    pending = {task for task in tasks if not task.done()}
    deadline = asyncio.get_running_loop().time() + patience
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.25)
        if asyncio.get_running_loop().time() >= deadline:
            break
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: nobody else waits for it
    if pending:
        logger.warning("backplane: %d task(s) did not stop when cancelled", len(pending))
