"""Client rules both fronts share, without I/O: the asyncio ``client.py`` and the blocking ``sync``.

``ClientCore`` is what an ``IPCClient`` is, whichever front drives it: its
options (``options.ClientOptions``), its status and the transitions it may
make (``TRANSITIONS``), the connect guard, what admission records, the
verdict after a lost connection (finish, or reconnect on the ``backoff``
schedule), the close and destroy rules, and the topics registry
(``Topics``: explicit subscriptions, ``subscription()`` references, what to
restore). Each front adds only its I/O: waiting, timers, threads, sockets.

The front's side of the contract, the hooks ``ClientCore`` calls:
``_emit`` (deliver an event to listeners; the asyncio front calls them, the
blocking front queues them for its listener thread) and ``_wake_waiters``
(calls waiting for a live connection may go on, or must fail). The blocking
front calls every method here with its client lock held.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from .errors import (
    ConnectionClosedError,
    HandshakeError,
    IPCError,
    MessageTooLargeError,
    ProtocolError,
)
from .events import EventEmitter, Tasks, Throttle, shorten
from .options import RETRY_BASE, ClientOptions
from .packets import (
    Agreement,
    hello,
    publish_request,
    published_topic,
    subscribe_request,
    succeeded,
    topic_list,
    unsubscribe_request,
)
from .transport import PeerCredentials

__all__ = [
    "RESERVED_EVENTS",
    "TRANSITIONS",
    "ClientCore",
    "IPCClientStatus",
    "Mailbox",
    "SubscriptionBase",
    "Topics",
    "attempts",
    "backoff",
    "checked_topics",
    "connect_error",
]

logger = logging.getLogger("ipc_server")


class IPCClientStatus(enum.IntEnum):
    """The client's status; the numbers are the seed's."""

    IDLE = 0
    CONNECTING = 1
    CONNECTED = 2
    READY = 3
    DISCONNECTED = 4
    RECONNECTING = 5


_S = IPCClientStatus
TRANSITIONS: dict[IPCClientStatus, frozenset[IPCClientStatus]] = {
    _S.IDLE: frozenset({_S.CONNECTING}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.DISCONNECTED, _S.IDLE}),
    _S.CONNECTED: frozenset({_S.READY, _S.DISCONNECTED, _S.IDLE}),
    _S.READY: frozenset({_S.DISCONNECTED, _S.IDLE}),
    _S.DISCONNECTED: frozenset({_S.RECONNECTING, _S.IDLE}),
    _S.RECONNECTING: frozenset({_S.CONNECTING, _S.DISCONNECTED, _S.IDLE}),
}
"""The status changes a client makes: ``connect`` (IDLE → CONNECTING → CONNECTED →
READY), a loss (READY → DISCONNECTED), a reconnect attempt (DISCONNECTED →
RECONNECTING → CONNECTING …), and closing for good (→ IDLE) from anywhere."""

RESERVED_EVENTS = frozenset(
    {"ready", "error", "close", "status", "message", "request", "connect", "disconnect"}
)
"""Built-in event names: messages on topics with these names are not emitted as events."""


def backoff(attempt: int, max_retry_time: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...).

    0.5 s, 1 s, 2 s, ... capped at ``max_retry_time``, each with jitter in
    [base/2, base] so that clients that lost the server together spread out.
    """
    base = min(RETRY_BASE * 2.0 ** (attempt - 1), float(max_retry_time))
    return base * (0.5 + random.random() / 2)


def connect_error(address: object, exc: BaseException, timeout: float | None) -> BaseException:
    """The error to raise for a connect to ``address`` that failed with ``exc``.

    The same type (a ``FileNotFoundError`` stays one), with a message that
    names the address and says what is likely wrong; ``exc`` is its cause.
    """
    errno = getattr(exc, "errno", None)
    new: BaseException
    if isinstance(exc, FileNotFoundError):
        new = FileNotFoundError(
            errno, f"no IPC server at {address}: no such socket file (is the server running?)"
        )
    elif isinstance(exc, ConnectionRefusedError):
        new = ConnectionRefusedError(
            errno,
            f"no IPC server at {address}: connection refused "
            "(nothing listens there: a server that stopped, or a stale socket file)",
        )
    elif isinstance(exc, PermissionError):
        new = PermissionError(
            errno,
            f"cannot connect to {address}: permission denied (the socket or its folder "
            "belongs to another user; the server's socket_mode decides who may connect)",
        )
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        within = "" if timeout is None else f" within connect_timeout={timeout:g} s"
        new = TimeoutError(f"no answer from {address}{within}: a busy server, or not an IPC server")
    elif isinstance(exc, ProtocolError) and not isinstance(
        exc, (HandshakeError, MessageTooLargeError)
    ):
        new = HandshakeError(f"{address} does not speak the IPC protocol: {exc}")
    else:
        return exc
    new.__cause__ = exc
    return new


def attempts(retries: int | None) -> Iterator[int]:
    """The numbers of the reconnect attempts ``retries`` allows: 1, 2, ... (None: no end)."""
    return itertools.count(1) if retries is None else iter(range(1, retries + 1))


def checked_topics(topic: str | list[str]) -> list[str]:
    """The topics named by ``topic`` (one, or a non-empty list).

    Raises:
        TypeError: Anything else.
    """
    topics = topic_list(topic)
    if topics is None:
        raise TypeError("topic must be a str or a non-empty list of str")
    return topics


# ---------------------------------------------------------------------- subscriptions


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

    def __init__(self, client: ClientCore, topic: str, maxsize: int = 0) -> None:
        self.client = client
        self.topic = topic
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
        confirmed: Topics the server has confirmed, in order: restored after a reconnect.
        explicit: Topics ``subscribe()`` asked for (kept when a ``subscription()`` ends).
        refs: Live ``subscription()`` contexts per topic.
        streams: The subscriptions that receive each topic's messages (lists
            are replaced, never changed, so a reader may iterate one unlocked).
    """

    __slots__ = ("confirmed", "explicit", "refs", "streams")

    def __init__(self) -> None:
        self.confirmed: dict[str, None] = {}
        self.explicit: set[str] = set()
        self.refs: dict[str, int] = {}
        self.streams: dict[str, list[SubscriptionBase]] = {}

    def subscribed(self, topics: list[str], *, explicit: bool) -> None:
        """The server confirmed a subscription to ``topics``."""
        for t in topics:
            self.confirmed[t] = None
            if explicit:
                self.explicit.add(t)

    def unsubscribed(self, topics: list[str]) -> None:
        """``unsubscribe()`` was called for ``topics``."""
        for t in topics:
            self.confirmed.pop(t, None)
            self.explicit.discard(t)

    def open(self, sub: SubscriptionBase) -> bool:
        """Register a ``subscription()``; True if its topic still needs subscribing.

        Registered before subscribing, so that a message published right
        after the server's answer (even in the same read) reaches it.
        """
        topic = sub.topic
        self.refs[topic] = self.refs.get(topic, 0) + 1
        self.streams[topic] = [*self.streams.get(topic, ()), sub]
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
            return False
        del self.confirmed[topic]
        return True

    def end_all(self) -> None:
        """The client closed for good: every subscription ends."""
        for subs in self.streams.values():
            for sub in subs:
                sub._end()


# ---------------------------------------------------------------------- the client


class ClientCore(ClientOptions, EventEmitter):
    """What both ``IPCClient`` fronts are, without I/O (see the module docstring).

    Attributes:
        id: The id the server assigned; kept across reconnects.
        status: The client's ``IPCClientStatus``.
        info: What the server answered in the CONNECTION exchange (id,
            compress, messagepack, features).
    """

    def __post_init__(self, path: str | None, host: str | None, port: int | None) -> None:
        super().__post_init__(path, host, port)
        EventEmitter.__init__(self)
        self.id: str | None = None
        self.status = IPCClientStatus.IDLE
        self.info: dict[str, Any] = {}
        self._registry = Topics()
        self._nonces = itertools.count(1)
        self._payload: Any = None
        self._closed = (
            True  # no connection wanted: closed (or closing) for good, or never connected
        )
        self._finished = True  # close was emitted (or there was nothing to close)
        self._close_reason: Any = None
        # What holds the reads (max_pending_events): running listener tasks, full subscriptions.
        self._tasks = Tasks(self.max_pending_events, lambda full: self._events_full(self, full))
        self._full: set[object] = set()
        self._full_lock = threading.Lock()  # the blocking front changes it from several threads
        self._log_throttle = Throttle()
        self._connects = 0  # CONNECTION exchanges that admitted this client, reconnects included

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.address} id={self.id!r} status={self.status.name}>"

    # ------------------------------------------------------------------ hooks of the front

    def _emit(self, event: str, *args: Any) -> bool:
        """Deliver ``event`` to its listeners; True if it has any."""
        raise NotImplementedError

    def _wake_waiters(self, error: BaseException | None) -> None:
        """Wake calls waiting for a live connection: it is there (None), or never will be."""
        raise NotImplementedError

    def _connection_stats(self) -> dict[str, Any] | None:
        """The live connection's ``stats()``, or None when there is none."""
        raise NotImplementedError

    def _events_waiting(self) -> int:
        """Pushed messages waiting for a listener on the front's side (its listener queue)."""
        return 0

    def stats(self) -> dict[str, Any]:
        """What this client holds and has done: its status, its connection's counters.

        ``connects`` counts admissions (``reconnects`` those after the first);
        ``events_waiting`` the pushed messages not yet taken by their listeners
        or ``subscription()`` iterators; ``connection`` the live connection's
        ``stats()`` (packets and bytes in and out, pending requests), or None.
        """
        registry = self._registry
        waiting = len(self._tasks) + self._events_waiting()
        for subs in registry.streams.values():
            for sub in subs:
                waiting += len(sub._box.items)
        return {
            "id": self.id,
            "address": str(self.address),
            "status": self.status.name,
            "connects": self._connects,
            "reconnects": max(0, self._connects - 1),
            "topics": len(registry.confirmed),
            "events_waiting": waiting,
            "connection": self._connection_stats(),
        }

    def _stats_unsupported(self) -> IPCError:
        return IPCError(
            f"the server at {self.address} does not answer stats requests "
            "(it is not a server of this library, or an older one)"
        )

    def _hold_events(self, hold: bool) -> None:
        """Stop reading (True) because ``max_pending_events`` wait, or read on (False)."""
        raise NotImplementedError

    def _events_full(self, holder: object, full: bool) -> None:
        """``holder`` (listener tasks, a subscription, a listener queue) is full, or no longer."""
        with self._full_lock:
            was = bool(self._full)
            if full:
                self._full.add(holder)
            else:
                self._full.discard(holder)
            now = bool(self._full)
        if now != was:
            self._hold_events(now)

    # ------------------------------------------------------------------ status

    @property
    def is_ready(self) -> bool:
        """Whether the client can send now."""
        return self.status is IPCClientStatus.READY

    def _set_status(self, status: IPCClientStatus) -> None:
        old = self.status
        if status is old:
            return
        if status not in TRANSITIONS[old]:
            raise RuntimeError(f"client status cannot go from {old.name} to {status.name}")
        self.status = status
        self._emit("status", status)

    def _report(self, exc: BaseException) -> None:
        """Report a problem on ``error`` (logged when nobody listens)."""
        if not self._emit("error", exc):
            held = self._log_throttle.allow()
            if held is not None:
                more = f" [{held} similar lines held back]" if held else ""
                logger.warning("client %s: %s%s", shorten(self.id), shorten(exc, 500), more)

    # ------------------------------------------------------------------ connecting

    def _begin_connect(self, payload: Any) -> None:
        """``connect()`` starts: only from an idle client.

        Raises:
            RuntimeError: The client is connected, connecting or reconnecting.
        """
        if self.status is not IPCClientStatus.IDLE or not self._closed:
            raise RuntimeError(f"connect() needs an idle client; status is {self.status.name}")
        self._payload = payload
        self._closed = False
        self._finished = False
        self._close_reason = None

    def _connect_failed(self) -> None:
        """``connect()`` failed: back to idle, as if it had not been called."""
        self._closed = True
        self._finished = True
        self._set_status(IPCClientStatus.IDLE)

    def _check_server(self, peer: PeerCredentials | None) -> None:
        """Connected, nothing sent yet: who answers at a Unix socket must run as ``server_uid``.

        ``peer`` is what the OS tells of the server's process (None over TCP,
        or where it does not tell: then there is nothing to check). Reads only
        the options (no lock needed).

        Raises:
            HandshakeError: It runs as another uid; a refusal, so a reconnect
                stops there (``_attempt_failed``).
        """
        if peer is None or peer.uid is None or self.address.kind != "unix":
            return
        wanted = self.server_uid
        if peer.uid == wanted or (wanted is None and peer.uid in (os.geteuid(), 0)):
            return
        if wanted is not None:
            expected = f"uid {wanted}"
        else:
            expected = f"uid {os.geteuid()} (this process's) or 0 (root)"
        raise HandshakeError(
            f"the server at {self.address} runs as uid {peer.uid}, not {expected} "
            "(server_uid); nothing was sent to it"
        )

    def _hello(self) -> bytes:
        """This client's CONNECTION packet (its payload, and its id once it has one)."""
        return hello(self._payload, self.id, compress=self.compress, codec=self.codec)

    def _admitted(self, agreement: Agreement) -> list[str]:
        """The server answered: record its answer; return the topics to subscribe again."""
        info = agreement.info
        self.info = info
        self._connects += 1
        if isinstance(info.get("id"), str):
            self.id = info["id"]
        return list(self._registry.confirmed)

    def _ready(self) -> None:
        """Admitted (and topics restored): READY, waiters go on, ``ready`` is emitted."""
        self._set_status(IPCClientStatus.READY)
        self._wake_waiters(None)
        self._emit("ready", self.info)

    # ------------------------------------------------------------------ losing a connection

    def _after_loss(
        self, peer_end: dict[str, Any] | None, reason: Any, ended_here: bool
    ) -> tuple[bool, Any]:
        """An admitted connection is gone: ``(reconnect?, reason)``.

        No reconnect when the client is closing, when the server's END did not
        allow one, when this side ended the connection (``ended_here``: its
        close or destroy), or when reconnecting is off. The reason is the
        server's END reason if it sent one.
        """
        if self._finished:
            return False, reason  # destroy() finished it already
        self._set_status(IPCClientStatus.DISCONNECTED)
        if self._closed:
            return False, reason
        if peer_end is not None and not peer_end.get("a"):
            return False, peer_end.get("m")  # the server closed us for good
        if ended_here or not self.reconnect or self.retries == 0:
            return False, reason
        return True, reason

    def _retry_delays(self) -> Iterator[float]:
        """The wait before each reconnect attempt, ``retries`` of them (None: no end)."""
        for attempt in attempts(self.retries):
            self._set_status(IPCClientStatus.RECONNECTING)
            yield backoff(attempt, self.max_retry_time)

    def _attempt_failed(self, exc: BaseException) -> bool:
        """A reconnect attempt failed with ``exc``: True if it is worth another one.

        A refusal (``HandshakeError``: authentication, a full server) is final.
        """
        if isinstance(exc, HandshakeError):
            return False
        if not self._closed:
            self._set_status(IPCClientStatus.DISCONNECTED)
        return True

    def _finish(self, reason: Any) -> None:
        """Closed for good: waiters fail, subscriptions end, IDLE, ``close(reason)`` once."""
        first = not self._finished
        self._finished = True
        self._closed = True
        self._close_reason = reason
        self._wake_waiters(ConnectionClosedError(reason))
        self._registry.end_all()
        self._set_status(IPCClientStatus.IDLE)
        if first:
            self._emit("close", reason)

    def _closed_error(self) -> ConnectionClosedError:
        """What a call on a client closed for good raises."""
        reason = self._close_reason
        return ConnectionClosedError(reason if reason is not None else "client is not connected")

    # ------------------------------------------------------------------ closing

    def _begin_close(self) -> bool:
        """``close()`` starts; False if the client is closed or closing already."""
        if self._closed:
            return False
        self._closed = True
        return True

    def _begin_destroy(self) -> bool:
        """``destroy()`` starts; False once closed for good (it also ends a ``close()``)."""
        if self._finished:
            return False
        self._closed = True
        return True

    # ------------------------------------------------------------------ pub/sub

    @property
    def topics(self) -> list[str]:
        """Topics this client is subscribed to (restored after a reconnect)."""
        return list(self._registry.confirmed)

    @staticmethod
    def _subscribe_request(topic: str | list[str]) -> dict[str, Any]:
        checked_topics(topic)
        return subscribe_request(topic)

    def _subscribe_done(self, topic: str | list[str], reply: Any, *, explicit: bool = True) -> bool:
        ok = succeeded(reply)
        if ok:
            self._registry.subscribed(checked_topics(topic), explicit=explicit)
        return ok

    def _unsubscribe_request(self, topic: str | list[str]) -> dict[str, Any]:
        self._registry.unsubscribed(checked_topics(topic))
        return unsubscribe_request(topic)

    @staticmethod
    def _publish_request(topic: str, message: Any) -> dict[str, Any]:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        return publish_request(topic, message)

    @staticmethod
    def _subscription_topic(topic: str) -> str:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        return topic

    def _message_arrived(self, data: Any) -> None:
        """A MESSAGE arrived: a pub/sub delivery, or the ``message`` event."""
        topic = published_topic(data)
        if topic is None:
            self._emit("message", data)
            return
        # A published message: to the topic's subscriptions, then its listeners.
        # A topic named like a built-in event ("close", "error", ...) would fire
        # that event's listeners: such topics reach subscription() only.
        message = data["message"]
        subs = self._registry.streams.get(topic)
        if subs:
            for sub in subs:
                sub._put(message)
        if topic not in RESERVED_EVENTS:
            self._emit(topic, message)
