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
from collections.abc import Callable, Iterator
from typing import Any

from .errors import (
    ConnectionClosedError,
    HandshakeError,
    IPCError,
    MessageTooLargeError,
    ProtocolError,
)
from .events import EventEmitter, Tasks, Throttle, shorten
from .options import RETRY_BASE, ClientOptions, check_timeout
from .packets import (
    GROUPS,
    SERVE,
    SERVICES,
    WILDCARDS,
    Agreement,
    hello,
    publish_request,
    published_topic,
    subscribe_request,
    succeeded,
    topic_list,
    unsubscribe_request,
)
from .subscriptions import Topics
from .topics import check_pattern, check_topic, is_pattern, matches, service_error
from .transport import PeerCredentials

__all__ = [
    "RESERVED_EVENTS",
    "TRANSITIONS",
    "ClientCore",
    "IPCClientStatus",
    "attempts",
    "backoff",
    "checked_topics",
    "connect_error",
]

logger = logging.getLogger("ipc_server.client")


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
        self._features: frozenset[str] = frozenset()  # what the server announced, last admission
        self._served: dict[str, Callable[..., Any]] = {}  # service name -> its handler

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
        waiting = len(self._tasks) + self._events_waiting() + registry.waiting()
        return {
            "id": self.id,
            "address": str(self.address),
            "status": self.status.name,
            "connects": self._connects,
            "reconnects": max(0, self._connects - 1),
            "topics": len(registry.names()),
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
        return hello(
            self._payload,
            self.id,
            compress=self.compress,
            codec=self.codec,
            timeout=check_timeout(self.request_timeout),
        )

    def _admitted(self, agreement: Agreement) -> list[tuple[Any, dict[str, Any] | None]]:
        """The server answered: record its answer; return the requests that restore what
        this client had (subscriptions, services), to send before it is ready."""
        info = agreement.info
        self.info = info
        self._features = agreement.features
        self._connects += 1
        if isinstance(info.get("id"), str):
            self.id = info["id"]
        return self._restore_requests()

    _logger = logger

    def _ready(self) -> None:
        """Admitted (and topics restored): READY, waiters go on, ``ready`` is emitted."""
        if logger.isEnabledFor(logging.INFO):
            again = " again" if self._connects > 1 else ""
            logger.info("connected%s to %s as %s", again, self.address, shorten(self.id))
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
        logger.info("connection to %s lost (%s); reconnecting", self.address, shorten(reason, 200))
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
            logger.info("closed (%s): %s", self.address, shorten(reason, 200))
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
        """Topics and patterns this client is subscribed to (restored after a reconnect)."""
        return self._registry.names()

    def _pubsub_check(self, topics: list[str], group: str | None) -> None:
        """Refuse, before anything is sent, what this server cannot do (once it is known)."""
        if group is not None:
            if not isinstance(group, str):
                raise TypeError(f"group must be a str, not {type(group).__name__}")
            if not group:
                raise ValueError("group must be a non-empty str")
        if not self._connects:
            return  # nothing known of the server yet
        features = self._features
        if group is not None and GROUPS not in features:
            raise IPCError(
                f"the server at {self.address} has no worker groups (not a server of this library)"
            )
        if WILDCARDS not in features and any(is_pattern(t) for t in topics):
            raise IPCError(
                f"the server at {self.address} does not match wildcard topics "
                "(not a server of this library)"
            )

    def _subscribe_request(
        self, topic: str | list[str], group: str | None = None
    ) -> dict[str, Any]:
        topics = checked_topics(topic)
        for t in topics:
            check_pattern(t)
        self._pubsub_check(topics, group)
        return subscribe_request(topic, group)

    def _subscribe_done(
        self,
        topic: str | list[str],
        reply: Any,
        *,
        explicit: bool = True,
        group: str | None = None,
    ) -> bool:
        ok = succeeded(reply)
        if ok:
            self._registry.subscribed(checked_topics(topic), explicit=explicit, group=group)
        return ok

    def _unsubscribe_request(
        self, topic: str | list[str], group: str | None = None
    ) -> dict[str, Any]:
        topics = checked_topics(topic)
        self._pubsub_check([], group)
        self._registry.unsubscribed(topics, group)
        return unsubscribe_request(topic, group)

    def _restore_requests(self) -> list[tuple[Any, dict[str, Any] | None]]:
        """The requests that put this client's subscriptions and services back on a new
        connection: ``(data, extension fields or None)``."""
        requests: list[tuple[Any, dict[str, Any] | None]] = [
            (subscribe_request(topics, group), None) for topics, group in self._registry.restore()
        ]
        requests.extend((name, {"x": SERVE}) for name in self._served)
        return requests

    # ------------------------------------------------------------------ services

    def _service_check(self, name: str) -> None:
        """Refuse a service name that is not one, or a server without services.

        Raises:
            TypeError, ValueError: ``name`` is not a topic-like name (tokens, no wildcard).
            IPCError: The server has no services (a Node server).
        """
        if not isinstance(name, str):
            raise TypeError(f"a service name is a str, not {type(name).__name__}")
        error = service_error(name)
        if error is not None:
            raise ValueError(f"invalid service name: {error}")
        if self._connects and SERVICES not in self._features:
            raise IPCError(
                f"the server at {self.address} has no services (not a server of this library)"
            )

    def _service_handler(self, name: Any) -> Callable[..., Any] | None:
        """The handler this client serves ``name`` with, if it does."""
        return self._served.get(name) if isinstance(name, str) else None

    def _registers_now(self) -> bool:
        """Whether a ``serve``/``unserve`` is sent now: the client is connected, or connecting
        (it then waits for the connection; a registration restored meanwhile is harmless).
        Else only this client's registry changes, and ``connect()`` sends what it holds."""
        return not self._closed

    @staticmethod
    def _not_served(name: Any) -> IPCError:
        """The answer to a call of ``name`` that this worker does not serve (any more)."""
        return IPCError(f"this worker does not serve {name!r} (any more)")

    @staticmethod
    def _refused(name: str) -> IPCError:
        """What a registration the server did not take raises (or reports)."""
        return IPCError(f"the server refused to register service {name!r}")

    @staticmethod
    def _publish_request(topic: str, message: Any) -> dict[str, Any]:
        check_topic(topic)
        return publish_request(topic, message)

    def _subscription_topic(self, topic: str) -> str:
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        check_pattern(topic)
        self._pubsub_check([topic], None)
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
        registry = self._registry
        if registry.streams:
            registry.deliver(topic, message)
        if topic not in RESERVED_EVENTS:
            self._emit(topic, message)
        if registry.patterns:
            # Each matching pattern's subscriptions and listeners get it too, with the topic.
            for pattern in registry.patterns:
                if matches(pattern, topic):
                    registry.deliver(pattern, (topic, message))
                    self._emit(pattern, message, topic)
