"""``NatsBackplane``: servers on several hosts share topics, services and surveys through NATS.

Local first: ``publish`` never waits (the server delivered locally already):
it hands the message to nats-py at once when nothing waits ahead of it (to
the socket, when nothing is unsent there either), else queues it for the
sender task, which hands the queue to the broker while it is up; the queue
is the bounded outbox while it is down (``sender.Sender``). Messages from
the broker are delivered in nats-py's reader while nothing waits ahead of
them, a bounded number a turn; the rest wait in each subscription's bounded
queue (nats-py's), so a busy server never stalls the broker reader
(``inbound.Inbound``, ``link``). A
supervisor task owns the connection: dial with jittered backoff and no
attempt limit; on each connection resubscribe every interest and service,
confirm the broker has them, flush the outbox, then say "up"; a liveness
probe every ``ping_interval`` drops a connection that stops answering.
See ``docs/backplane.md``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl as ssl_module
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import IPCError
from ..events import Throttle
from .base import Backplane, BackplaneHost
from .cluster import Cluster, quietly
from .delivery import Outbox, Sequencer, Tracker
from .inbound import Inbound
from .link import Credentials, Link, background, cancel_all, nats_available
from .sender import Sender
from .serving import Serving
from .subjects import Subjects, escape_token, redact_url
from .subscriptions import Sub, Subscriptions, paced, unsubscribe
from .wire import BEAT, BYE, HELLO, Envelopes

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["NatsBackplane"]

logger = logging.getLogger("ipc_server.backplane")

_DENIED = re.compile(r'permissions violation for subscription to "([^"]+)"')
_DEFAULT_MAX_PAYLOAD = 1 << 20  # the broker's default, until it says otherwise
BEHIND = 10.0
"""How long an unanswered probe is waited for while messages keep arriving (its
PONG is behind them): a server catching up on a burst is not dropped; one that
hears but cannot be heard is, after this long. The broker's own
``write_deadline`` drops a server that stops reading after 10 s by default."""
_COUNTER_NAMES = (
    "published received received_group duplicates gaps missed malformed reconnects refused "
    "heartbeats calls_sent calls_served surveys_sent surveys_answered"
)
_COUNTERS = _COUNTER_NAMES.split()


class NatsBackplane(Sender, Backplane):
    """A backplane on a NATS broker (or cluster).

    Args:
        servers: Broker URLs (``nats://host:4222``, ``tls://...``); tried in
            turn. Credentials in a URL are honoured and never shown.
        namespace: The prefix of every subject (required): two applications
            on one broker never share a subject.
        ssl: TLS context for the broker connection.
        user: User name (with ``password``).
        password: Password. Credentials are never in logs, events or ``repr``.
        token: An authentication token.
        nkeys_seed: An nkey seed, itself (``SU...``) or a path to a file holding it.
        creds_file: A JWT ``.creds`` file.
        connect_timeout: How long ``start()`` waits for the broker, and the
            bound of each connection attempt.
        outbox_bytes: The outbox's bound in bytes while the broker is down:
            messages past it are dropped (oldest first) and counted.
        outbox_seconds: The outbox's bound in age: older messages are dropped too.
        inbound_limit: Broker messages each subscription's inbound queue holds
            (each carries one or more of a server's messages); past it, they
            are dropped and counted (and this server sees the gap). Messages
            queue only past the 256 delivered in the reader in a turn of the
            loop, or behind others of their subscription that queued.
        inbound_bytes: Bytes each subscription's inbound queue holds, likewise.
        ping_interval: The liveness probe's period: a connection whose probe
            stays unanswered for twice this long is dropped and redialled.
        heartbeat: Seconds between membership heartbeats; a member is gone
            after three of its intervals without one.
        confirm_timeout: Bound of ``add_interest``'s wait for the broker.
        reconnect_max: The longest pause between connection attempts.
        max_streams: Topics whose sequence numbers are kept, per direction.
        max_remote_calls: Calls and surveys from other servers run at once here.
    """

    def __init__(
        self,
        *,
        servers: Sequence[str],
        namespace: str,
        ssl: ssl_module.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        nkeys_seed: str | None = None,
        creds_file: str | None = None,
        connect_timeout: float = 2.0,
        outbox_bytes: int = 1 << 20,
        outbox_seconds: float = 2.0,
        inbound_limit: int = 10_000,
        inbound_bytes: int = 64 << 20,
        ping_interval: float = 2.0,
        heartbeat: float = 1.0,
        confirm_timeout: float = 2.0,
        reconnect_max: float = 2.0,
        max_streams: int = 100_000,
        max_remote_calls: int = 1024,
    ) -> None:
        if isinstance(servers, str) or not servers or not all(isinstance(s, str) for s in servers):
            raise TypeError("servers must be a non-empty list of broker URLs")
        Subjects(namespace, "")  # raises ValueError for a bad namespace
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError("ssl must be an ssl.SSLContext")
        for option, value in (
            ("connect_timeout", connect_timeout),
            ("outbox_seconds", outbox_seconds),
            ("ping_interval", ping_interval),
            ("heartbeat", heartbeat),
            ("confirm_timeout", confirm_timeout),
            ("reconnect_max", reconnect_max),
        ):
            if not value > 0:
                raise ValueError(f"{option} must be a positive number of seconds")
        if not nats_available():
            raise ImportError("NatsBackplane needs nats-py: pip install 'ipc-server[nats]'")
        self._servers = list(servers)
        self._namespace = namespace
        self._ssl = ssl
        self._credentials = Credentials(
            user=user, password=password, token=token, nkeys_seed=nkeys_seed, creds_file=creds_file
        )
        self._connect_timeout = connect_timeout
        self._inbound_limit = inbound_limit
        self._ping_interval = ping_interval
        self._heartbeat = heartbeat
        self._confirm_timeout = confirm_timeout
        self._reconnect_max = reconnect_max
        self._max_streams = max_streams
        self._max_remote_calls = max_remote_calls
        self._outbox = Outbox(outbox_bytes, outbox_seconds)
        self._sequencer = Sequencer(max_streams)
        self._tracker = Tracker(max_streams, self._covered)
        self._subs = Subscriptions({}, (inbound_limit, inbound_bytes))
        self._inbound_bytes = inbound_bytes
        self._state = "new"  # new, down, restoring, up, closed
        self._sending = False
        self._up_target = 0
        self._link: Link | None = None
        self._gen = 0
        self._max_payload = _DEFAULT_MAX_PAYLOAD
        self._down_reason = "not connected yet"
        self._down_reported = False
        self._connected_once = False
        self._session_epoch = 0
        self._barrier: list[asyncio.Future[bool]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._throttle = Throttle()
        self._slow = 0  # messages nats-py dropped (a slow consumer)
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def __repr__(self) -> str:
        servers = [redact_url(url) for url in self._servers]
        return (
            f"<NatsBackplane namespace={self._namespace!r} servers={servers} state={self._state}>"
        )

    # -- lifecycle --------------------------------------------------------

    async def start(self, host: BackplaneHost) -> None:
        if self._state not in ("new", "closed"):
            raise RuntimeError("the backplane is started already")
        # Started again after close() (the server restarted): what this server
        # knew of the others starts over; its own numbering goes on.
        self._tracker = Tracker(self._max_streams, self._covered)
        self._barrier = []
        self._connected_once = self._down_reported = False
        self._host = host
        self._id = server_id = str(host.server_id)
        self._loop = loop = asyncio.get_running_loop()
        self._subjects = subjects = Subjects(self._namespace, server_id)
        self._envelopes = Envelopes(server_id)
        self._serving = serving = Serving(self, self._max_remote_calls)
        self._cluster = cluster = Cluster(self, serving, self._heartbeat)
        self._state = "down"
        self._up_event = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._subs = subs = Subscriptions(
            {
                "topic": self._on_topic,
                "service": serving.on_call,
                "heartbeat": cluster.on_heartbeat,
                "survey": serving.on_survey,
                "replies": cluster.on_reply,
                "broadcast": self._on_topic,
            },
            (self._inbound_limit, self._inbound_bytes),
            self._on_group,
            self._now,
        )
        for kind, subject in (
            ("heartbeat", subjects.heartbeat),
            ("survey", subjects.survey),
            ("replies", subjects.replies),
            ("broadcast", subjects.broadcast),
        ):
            subs.add(kind, kind, subject)
        self._inbox = Inbound(self, self._tracker)
        self._tasks = [
            loop.create_task(self._supervise(), name="backplane connection"),
            loop.create_task(self._send(), name="backplane sender"),
            loop.create_task(self._beat(), name="backplane heartbeat"),
        ]
        try:
            await asyncio.wait_for(self._up_event.wait(), timeout=self._connect_timeout)
        except asyncio.TimeoutError:
            self._went_down(self._down_reason)

    async def close(self) -> None:
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        link = self._link
        if link is not None and self._state == "up":
            # What is queued gets a short chance to leave, then a goodbye.
            deadline = self._loop.time() + min(self._outbox.max_seconds, 1.0)
            while self._outbox and link.connected and self._loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            await self._direct(BYE)
            await link.confirm(1.0)
        self._state = "closed"
        self._sending = False
        await cancel_all(self._tasks)
        self._serving.cancel_all()
        self._cluster.lost("the backplane was closed")
        self._release_barrier(True)
        if link is not None:
            self._link = None
            await link.close()

    @property
    def is_up(self) -> bool:
        return self._state == "up"

    def members(self) -> list[str]:
        if self._state == "new":
            return []
        return self._cluster.members.all()

    def stats(self) -> dict[str, int]:
        counts = dict(self._counts)
        outbox = self._outbox
        counts["dropped_outbox"] = outbox.dropped
        counts["dropped_inbound"] = self._slow
        counts["dropped"] = outbox.dropped + counts["dropped_inbound"]
        counts["queued"] = len(outbox)
        counts["queued_bytes"] = outbox.size
        counts["queued_bytes_peak"] = outbox.peak
        counts["interests"] = self._subs.count("topic")
        counts["groups"] = self._subs.count("group")
        counts["services"] = self._subs.count("service")
        counts["resubscribed"] = self._subs.resubscribed
        counts["members"] = len(self.members())
        counts["serving"] = len(self._serving.running) if self._state != "new" else 0
        counts["up"] = int(self.is_up)
        return counts

    # -- the connection -----------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            url = self._servers[attempt % len(self._servers)]
            shown = redact_url(url)
            try:
                link = await Link.dial(
                    url,
                    shown,
                    name=f"ipc-server {self._id}"[:128],
                    ssl_context=self._ssl,
                    credentials=self._credentials,
                    connect_timeout=self._connect_timeout,
                    ping_interval=self._ping_interval,
                    pending_size=max(2 * self._outbox.max_bytes, 2 << 20),
                    on_error=self._nats_error,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self._down_reason = f"cannot reach the broker at {shown}: {_describe(exc)}"
                self._log_warning("%s (attempt %d)", self._down_reason, attempt)
                delay = min(self._reconnect_max, 0.05 * 2 ** min(attempt, 16))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            attempt = 0
            try:
                await self._session(link)
            finally:
                self._end_session(link)

    async def _session(self, link: Link) -> None:
        self._gen += 1
        gen = self._gen
        self._link = link
        self._state = "restoring"
        self._session_epoch = random.getrandbits(62)
        self._max_payload = link.max_payload
        if self._connected_once:
            self._counts["reconnects"] += 1
        self._connected_once = True
        logger.info("connected to the broker at %s", link.url)
        # Every subscription on this connection (those added meanwhile
        # included), then make sure the broker has them all.
        await self._subs.restore(link, gen)
        if not await self._confirm(link, max(self._confirm_timeout, len(self._subs) / 5000)):
            link.drop("the broker did not confirm the subscriptions in time")
            return
        await self._direct(HELLO)
        # The outbox goes out, then "up" (the sender says it: _check_up).
        self._up_target = self._outbox.removed + len(self._outbox)
        self._sending = True
        self._wake_sender.set()
        self._check_up()
        watch = self._loop.create_task(self._watch(link), name="backplane liveness")
        try:
            await link.lost.wait()
        finally:
            watch.cancel()

    def _end_session(self, link: Link) -> None:
        if self._state == "closed":
            return
        was_up = self._state == "up"
        self._link = None
        self._sending = False
        self._state = "down"
        self._up_event.clear()
        reason = link.reason
        self._down_reason = reason
        self._subs.disconnected()
        self._cluster.lost(reason)
        self._serving.cancel_all()
        self._release_barrier(True)
        logger.warning("%s (%s)", reason, link.url)
        if was_up or self._down_reported:
            self._down_reported = False
            self._went_down(reason)
        background(link.close())

    def _went_down(self, reason: str) -> None:
        if self._down_reported:
            return
        self._down_reported = True
        self.event("down", {"reason": reason, "queued": len(self._outbox)})

    def _check_up(self) -> None:
        if self._state == "restoring" and self._sending and self._outbox.removed >= self._up_target:
            link = self._link
            self._state = "up"
            self._down_reported = False
            self._cluster.restored()
            self._up_event.set()
            self.event(
                "up",
                {
                    "server": link.url if link else "",
                    "reconnects": self._counts["reconnects"],
                    "interests": self._subs.count("topic"),
                },
            )

    async def _watch(self, link: Link) -> None:
        """Drop a connection that stops answering (alive but deaf)."""
        while True:
            await asyncio.sleep(self._ping_interval)
            if not link.connected:
                link.drop(link.reason)
                return
            if not await link.probe(2 * self._ping_interval, BEHIND):
                link.drop(
                    f"the broker did not answer for {2 * self._ping_interval:g} s "
                    "(a dead or deaf connection)"
                )
                return

    def _nats_error(self, link: Link, exc: Exception) -> None:
        from nats.errors import SlowConsumerError

        if isinstance(exc, SlowConsumerError):
            self._slow += 1
            return
        text = str(exc)
        denied = _DENIED.search(text)
        if denied is not None:
            self._denied(link, denied.group(1))
        elif "permissions violation" in text:
            self.report(IPCError(f"the broker refused: {text}"))
        else:
            logger.debug("broker connection: %s", _describe(exc))

    def _denied(self, link: Link, subject: str) -> None:
        # The broker removed (or refused) a subscription while the connection
        # lives on: a deaf subscription. It is subscribed again until it holds.
        if self._subs.denied(subject, link, self._confirm_timeout, self._reconnect_max):
            self.report(
                IPCError(
                    f"the broker removed this server's subscription to {subject!r} "
                    "(permissions violation); subscribing again"
                )
            )

    # -- publish ------------------------------------------------------------

    def publish(self, topic: str, message: Any, groups: bool = False) -> bool:
        if self._state in ("new", "closed"):
            return False
        try:
            subject = self._subjects.topic(topic)
        except ValueError as exc:
            self._refuse(exc)
            return False
        return self._queue(topic, subject, message, groups)

    def broadcast(self, message: Any) -> None:
        if self._state not in ("new", "closed"):
            self._queue("", self._subjects.broadcast, message, False)

    async def _direct(self, kind: int) -> None:
        """Send a heartbeat of ``kind`` now, past the outbox."""
        link = self._link
        if link is None or not link.connected:
            return
        self._sequencer.beats += 1
        beat = self._sequencer.beats
        payload = self._envelopes.heartbeat(kind, self._session_epoch, self._heartbeat, beat)
        self._cluster.beat_sent(beat)
        try:
            await link.publish(self._subjects.heartbeat, payload)
        except Exception as exc:
            logger.debug("heartbeat not sent: %s", _describe(exc))

    # -- interests ------------------------------------------------------------

    async def add_interest(self, pattern: str, group: str | None = None) -> bool:
        result = (await self.add_interests([pattern], group))[0]
        if isinstance(result, BaseException):
            raise result
        return bool(result)

    async def add_interests(self, patterns: list[str], group: str | None = None) -> list[Any]:
        # One after the other, paced, then one confirmation for all.
        results: list[Any] = []
        subs: list[Sub] = []
        for pattern in patterns:
            try:
                subject = self._subjects.pattern(pattern)  # ValueError: bad or too long
            except ValueError as exc:
                results.append(exc)
                continue
            if group is None:
                sub = self._subs.add("topic", pattern, subject)
                self._tracker.clock = self._subs.clock
            else:
                sub = self._subs.add("group", pattern, subject, escape_token(group), group)
            subs.append(sub)
            results.append(True)
        async for sub in paced(subs):
            link = self._link
            if link is None or self._state != "up":
                return results  # applied when the connection is restored
            if sub.gen != self._gen:
                await self._subs.subscribe(sub, link, self._gen)
        if subs and self._state == "up":
            confirmed = await self._confirmed()
            results = [r if isinstance(r, BaseException) else confirmed for r in results]
        return results

    async def remove_interest(self, pattern: str, group: str | None = None) -> None:
        await self.remove_interests([pattern], group)

    async def remove_interests(self, patterns: list[str], group: str | None = None) -> None:
        # Each forgotten at once (an interest added again meanwhile is a new one),
        # then unsubscribed on the broker, paced.
        subs = self._subs
        detached = []
        for pattern in patterns:
            try:
                subject = self._subjects.pattern(pattern)
            except ValueError:
                continue  # never shared (too long a subject): nothing to remove
            if group is None:
                detached.append(subs.detach(subject, "topic"))
            else:
                detached.append(subs.detach(subject, "group", escape_token(group)))
        self._tracker.removals = subs.removals
        async for nats_sub in paced(filter(None, detached)):
            await unsubscribe(nats_sub)

    async def _confirmed(self) -> bool:
        """True once the broker has what this server subscribed to so far."""
        if self._state != "up":
            return True
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._barrier.append(waiter)
        self._wake_sender.set()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout=self._confirm_timeout)
        except asyncio.TimeoutError:
            return False

    def _release_barrier(self, result: bool) -> None:
        waiters, self._barrier = self._barrier, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)

    async def _confirm(self, link: Link, timeout: float) -> bool:
        """``link.confirm``, and the interests it confirmed are the tracker's to know."""
        clock = self._subs.clock  # every interest up to it is written (subscribe writes at once)
        ok = await link.confirm(timeout)
        if ok:
            self._tracker.confirmed = max(self._tracker.confirmed, clock)
        return ok

    def _covered(self, subject: str, since: int) -> bool:
        return self._subs.covered(subject, since)

    # -- what arrives ---------------------------------------------------------

    async def _on_topic(self, msg: Msg) -> None:
        if self._inbox.put(msg, None):
            await asyncio.sleep(0)

    async def _on_group(self, msg: Msg, sub: Sub) -> None:
        if self._inbox.put(msg, sub):
            await asyncio.sleep(0)

    def _now(self, sub: Sub | None, msg: Msg) -> None:
        """Deliver ``msg`` in nats-py's reader (see ``link``), which must not fail."""
        try:
            self._inbox.put(msg, sub)
        except Exception as exc:
            self.report(exc)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            if self._state == "up":
                await self._direct(BEAT)
                self._cluster.expire()  # while down, nobody is heard: nobody expires

    # -- calls and surveys ----------------------------------------------------

    async def add_service(self, name: str) -> None:
        sub = self._subs.add("service", name, self._subjects.service(name), "w")
        link = self._link
        if link is None or self._state != "up":
            return
        if sub.gen != self._gen:
            await self._subs.subscribe(sub, link, self._gen)
        await self._confirmed()

    async def remove_service(self, name: str) -> None:
        await self._subs.remove(self._subjects.service(name), "service", "w")
        await self._confirmed()  # no call is routed here once this returns

    async def call(self, service: str, data: Any, timeout: float | None) -> Any:
        return await self._cluster.call(service, data, timeout)

    async def survey(self, data: Any, timeout: float | None) -> list[tuple[str, Any]]:
        if self._state == "new":
            return []
        return await self._cluster.survey(data, timeout)

    # -- for Serving and Cluster ------------------------------------------------

    @property
    def host(self) -> BackplaneHost:
        return self._host

    @property
    def envelopes(self) -> Envelopes:
        return self._envelopes

    @property
    def subjects(self) -> Subjects:
        return self._subjects

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    async def answer(self, reply: str, payload: bytes) -> None:
        """Publish an answer on ``reply`` over the current connection, if any."""
        link = self._link
        if link is not None and link.connected:
            await quietly(link.publish(reply, payload))

    def malformed(self, exc: BaseException) -> None:
        self._malformed(exc)

    @property
    def up_link(self) -> Link | None:
        return self._link if self._state == "up" else None

    @property
    def down_reason(self) -> str:
        return self._down_reason

    async def send_heartbeat(self, kind: int) -> None:
        await self._direct(kind)

    def forget_origin(self, server: str) -> None:
        self._tracker.forget(server)

    def heard(self, server: str, beat: int) -> None:
        self._counts["heartbeats"] += 1
        self._tracker.heard(server, beat)

    # -- reporting ----------------------------------------------------------------

    def event(self, kind: str, info: dict[str, Any]) -> None:
        try:
            self._host.backplane_event(kind, info)
        except Exception as exc:
            self.report(exc)

    def report(self, exc: BaseException) -> None:
        try:
            self._host.report(exc)
        except Exception:
            logger.exception("the server's error report failed")

    def _malformed(self, exc: BaseException) -> None:
        self._counts["malformed"] += 1
        held = self._throttle.allow()
        if held is not None:
            self.report(IPCError(f"a malformed message from the broker was dropped: {exc}"))

    def _log_warning(self, text: str, *args: Any) -> None:
        held = self._throttle.allow()
        if held is not None:
            logger.warning(text + (f" ({held} more held back)" if held else ""), *args)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
