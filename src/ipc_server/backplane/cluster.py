"""The cluster as one server sees it: members by heartbeat, and its calls and surveys to them.

Membership comes from heartbeats only (``members.Members``): a survey waits
for exactly the members listed, and a call taken by a member that leaves (or
renews its broker connection) fails at once. Answers arrive on this server's
reply subjects; ``pending.Pending`` decides what each waiter gets.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    ConnectionClosedError,
    MessageTooLargeError,
    NoRespondersError,
    RequestTimeoutError,
)
from .link import Link, background
from .members import EXPIRY, Members, ReadClock
from .pending import Call, Pending, Survey
from .serving import Owner, Serving
from .subjects import escape_token
from .wire import BEAT, BYE, HELLO, read

if TYPE_CHECKING:
    from nats.aio.msg import Msg


__all__ = ["Cluster"]

logger = logging.getLogger("ipc_server.backplane")

ANSWER_GAP = 0.05
"""Seconds between two heartbeats that answer hellos, at least (or a tenth of the
interval, when that is shorter)."""


class ClusterOwner(Owner, Protocol):
    """What ``Cluster`` needs from its backplane, beyond what ``Serving`` does."""

    @property
    def up_link(self) -> Link | None:
        """The connection, while the backplane is up; else None."""
        ...

    @property
    def down_reason(self) -> str: ...

    async def send_heartbeat(self, kind: int) -> None: ...

    def forget_origin(self, server: str) -> None: ...

    def heard(self, server: str, beat: int) -> None:
        """A heartbeat numbered ``beat`` came from ``server``."""
        ...


class Cluster:
    """Members, and the calls and surveys this server waits on.

    Args:
        owner: The backplane.
        serving: Where cancellations from callers go.
        heartbeat: This server's heartbeat interval (after a reconnect, members
            get three of them to be heard again).
    """

    def __init__(self, owner: ClusterOwner, serving: Serving, heartbeat: float) -> None:
        self.owner = owner
        self.serving = serving
        self.heartbeat = heartbeat
        self.members = Members(owner.envelopes.origin)
        self.pending = Pending()
        self._answer: asyncio.TimerHandle | None = None
        self._answered = -math.inf
        self.reading = ReadClock(asyncio.get_running_loop().time(), heartbeat)

    def clock(self) -> float:
        """The time by which membership is judged (``members.ReadClock``)."""
        return self.reading.at(asyncio.get_running_loop().time())

    def beat_sent(self, beat: int) -> None:
        """This server sent its heartbeat number ``beat``; it comes back to it too."""
        self.reading.sent(beat, asyncio.get_running_loop().time())

    # -- membership -----------------------------------------------------------

    async def on_heartbeat(self, msg: Msg) -> None:
        owner = self.owner
        try:
            items = read(msg.data, 6)
            kind, server, epoch, interval, beat = items[1:6]
            if not isinstance(server, str):
                raise ValueError("heartbeat without a server id")
            if type(epoch) is not int or type(beat) is not int:
                raise ValueError("heartbeat without an epoch and a count")
            if interval.__class__ not in (int, float):
                raise ValueError("heartbeat without an interval")
            if server == self.members.own:
                self.reading.came_back(beat)
                return
            if kind == BYE:
                self.left(server)
                return
            change = self.members.beat(server, epoch, float(interval), self.clock())
            owner.heard(server, beat)
        except (ValueError, TypeError) as exc:
            owner.malformed(exc)
            return
        if change == "changed":
            # It renewed its broker connection: what it had taken went with the old one.
            self.pending.member_left(server)
        if kind == HELLO:
            self._answer_hello()

    def _answer_hello(self) -> None:
        """Answer a new server's hello with a heartbeat, so that it knows this one now.

        One heartbeat answers every hello heard before it leaves, and answers
        leave ``ANSWER_GAP`` apart at least: a hello is a peer's word too, and
        each answer reaches every server, so a flood of hellos would make
        every server of the cluster send as many heartbeats, each to all.
        """
        if self._answer is not None:
            return  # one is coming, and it leaves after this hello was heard
        loop = asyncio.get_running_loop()
        wait = self._answered + min(self.heartbeat / 10, ANSWER_GAP) - loop.time()
        self._answer = loop.call_later(max(wait, 0.0), self._send_answer)

    def _send_answer(self) -> None:
        self._answer = None
        self._answered = asyncio.get_running_loop().time()
        background(self.owner.send_heartbeat(BEAT))

    def left(self, server: str) -> None:
        """``server`` is gone (goodbye, or its heartbeat expired)."""
        self.members.leave(server)
        self.pending.member_left(server)
        self.owner.forget_origin(server)

    def expire(self) -> None:
        """Forget the members whose heartbeat is overdue."""
        # Its streams are kept (and forgotten as the least recently used): a
        # member that is only cut off for a while still has its gaps counted.
        for server in self.members.expire(self.clock()):
            logger.info("server %r left the cluster (no heartbeat)", server)
            self.pending.member_left(server)

    # -- answers ----------------------------------------------------------------

    async def on_reply(self, msg: Msg) -> None:
        owner = self.owner
        token = msg.subject[len(owner.subjects.reply_prefix) :]
        try:
            if token == "k":
                self.serving.cancel(str(read(msg.data, 2)[1]))
                return
            number = int(token)
            headers = msg.headers
            if headers and headers.get("Status") == "503":
                self.pending.no_responders(number, owner.subjects.namespace)
                return
            self.pending.answer(number, read(msg.data, 3))
        except (ValueError, TypeError, IndexError) as exc:
            owner.malformed(exc)

    def restored(self) -> None:
        """The broker connection is back: members get a few heartbeats to be heard again."""
        now = asyncio.get_running_loop().time()
        self.reading.restart(now)
        self.members.grace(now + EXPIRY * self.heartbeat)

    def lost(self, reason: str) -> None:
        """The broker connection is gone (or the backplane closed): every wait ends."""
        if self._answer is not None:
            self._answer.cancel()
            self._answer = None
        self.pending.lost(reason)

    # -- calls and surveys --------------------------------------------------------

    def _unreachable(self, service: str, detail: str) -> NoRespondersError:
        return NoRespondersError(
            service, f"no worker for service {service!r} on this server, and {detail}"
        )

    def _request(self, data: Any, timeout: float | None, what: str) -> bytes:
        """The envelope of a call or survey, within the broker's ``max_payload``."""
        owner = self.owner
        payload = owner.envelopes.request(timeout or None, data)
        if len(payload) > owner.max_payload:
            raise MessageTooLargeError(len(payload), owner.max_payload, what, option="max_payload")
        return payload

    async def call(self, service: str, data: Any, timeout: float | None) -> Any:
        owner = self.owner
        subject = owner.subjects.service(service)
        link = owner.up_link
        if link is None:
            raise self._unreachable(service, f"the broker is unreachable ({owner.down_reason})")
        payload = self._request(data, timeout, "cross-host call")
        loop = asyncio.get_running_loop()
        pending = self.pending
        token = pending.token()
        call = Call(service, loop.create_future(), timeout or None)
        pending.add_call(token, call)
        if timeout:
            call.timer = loop.call_later(timeout, pending.timed_out, token)
        owner.count("calls_sent")
        try:
            await link.publish(subject, payload, reply=owner.subjects.reply(token))
        except Exception as exc:
            call.future.cancel()
            raise self._unreachable(service, "the broker connection failed") from exc
        try:
            return await call.future
        except (RequestTimeoutError, asyncio.CancelledError):
            self._cancel_remote(call, token)
            raise

    def _cancel_remote(self, call: Call, token: int) -> None:
        # The worker that took the call stops its handler (no answer is awaited).
        owner = self.owner
        link = owner.up_link
        if call.worker is None or link is None:
            return
        subject = owner.subjects.cancels_of(escape_token(call.worker))
        payload = owner.envelopes.cancel(owner.subjects.reply(token))
        background(quietly(link.publish(subject, payload)))

    async def survey(self, data: Any, timeout: float | None) -> list[tuple[str, Any]]:
        owner = self.owner
        others = self.members.others()
        if not others:
            return []  # the servers awaited are those known by heartbeat: none
        link = owner.up_link
        if link is None:
            reason = f"the broker is unreachable ({owner.down_reason})"
            return [(server, ConnectionClosedError(reason)) for server in others]
        payload = self._request(data, timeout, "cross-host survey")
        loop = asyncio.get_running_loop()
        pending = self.pending
        token = pending.token()
        survey = Survey(others, loop.create_future(), timeout or None)
        pending.add_survey(token, survey)
        wait = timeout or None
        if wait is not None:
            survey.timer = loop.call_later(wait, pending.timed_out, token)
        owner.count("surveys_sent")
        try:
            await link.publish(owner.subjects.survey, payload, reply=owner.subjects.reply(token))
        except Exception:
            survey.future.cancel()
            reason = "the broker connection failed"
            return [(server, ConnectionClosedError(reason)) for server in others]
        result: list[tuple[str, Any]] = await survey.future
        return result


async def quietly(coro: Any) -> None:
    """Await ``coro``, logging (not raising) what it raises: a send that may fail."""
    try:
        await coro
    except Exception as exc:
        logger.debug("not sent: %s", type(exc).__name__)
