"""Calls and surveys from other servers, run here.

A call reaches one server of the service's queue group; it answers ``ACK`` at
once (so the caller knows which server took it and can tell if that server
goes away), runs ``host.remote_call`` in a task, and answers with the result
or the error. A survey reaches every server; each answers with its local
survey answers. At most ``limit`` of them run at once; past it a call is
answered with an error at once, never queued without bound. A cancellation
from the caller (timeout, or its own caller gave up) cancels the task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from ..packets import implied
from .wire import Envelopes, read

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .base import BackplaneHost
    from .subjects import Subjects

__all__ = ["Serving"]

logger = logging.getLogger("ipc_server.backplane")


class Owner(Protocol):
    """What ``Serving`` needs from its backplane."""

    @property
    def host(self) -> BackplaneHost: ...

    @property
    def envelopes(self) -> Envelopes: ...

    @property
    def subjects(self) -> Subjects: ...

    @property
    def max_payload(self) -> int: ...

    def count(self, name: str, n: int = 1) -> None: ...

    async def answer(self, reply: str, payload: bytes) -> None: ...

    def malformed(self, exc: BaseException) -> None: ...


class Serving:
    """The calls and surveys this server runs for others, by reply subject."""

    def __init__(self, owner: Owner, limit: int) -> None:
        self.owner = owner
        self.limit = limit
        self.running: dict[str, asyncio.Task[None]] = {}

    def _request(self, msg: Msg) -> tuple[str, Any, float | None] | None:
        try:
            items = read(msg.data, 4)
            origin, data = items[1], items[3]
            # None (no timeout) or seconds, as a request of this server's says
            # how long it waits: NaN or infinity would reach the loop's timers.
            valid, timeout = implied(items[2])
            if not isinstance(origin, str) or not valid:
                raise ValueError("malformed request envelope")
        except ValueError as exc:
            self.owner.malformed(exc)
            return None
        if not msg.reply or msg.reply in self.running:
            return None
        return origin, data, timeout

    async def on_call(self, msg: Msg) -> None:
        owner = self.owner
        request = self._request(msg)
        if request is None:
            return
        _, data, timeout = request
        try:
            service = owner.subjects.service_of(msg.subject)
        except ValueError as exc:
            owner.malformed(exc)
            return
        envelopes = owner.envelopes
        if len(self.running) >= self.limit:
            await owner.answer(
                msg.reply,
                envelopes.error(
                    "IPCError",
                    f"server {envelopes.origin!r} is running max_remote_calls={self.limit} "
                    "calls and surveys from other servers already",
                ),
            )
            return
        await owner.answer(msg.reply, envelopes.ack())
        owner.count("calls_served")
        self._run(msg.reply, self._call(msg.reply, service, data, timeout))

    async def on_survey(self, msg: Msg) -> None:
        owner = self.owner
        request = self._request(msg)
        if request is None:
            return
        origin, data, timeout = request
        if origin == owner.envelopes.origin or len(self.running) >= self.limit:
            return  # a survey past the limit: this server's slot times out
        owner.count("surveys_answered")
        self._run(msg.reply, self._survey(msg.reply, data, timeout))

    def _run(self, reply: str, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.running[reply] = task
        task.add_done_callback(lambda _: self.running.pop(reply, None))

    async def _call(self, reply: str, service: str, data: Any, timeout: float | None) -> None:
        owner = self.owner
        envelopes = owner.envelopes
        try:
            value = await owner.host.remote_call(service, data, timeout)
        except asyncio.CancelledError:
            return  # the caller gave up (or this server lost the broker): no answer
        except Exception as exc:
            payload = envelopes.error(type(exc).__name__, str(exc))
        else:
            payload = self._encoded(lambda: envelopes.ok(value), "the call's result")
        await owner.answer(reply, payload)

    async def _survey(self, reply: str, data: Any, timeout: float | None) -> None:
        owner = self.owner
        envelopes = owner.envelopes
        try:
            answers = await owner.host.remote_survey(data, timeout)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            payload = envelopes.error(type(exc).__name__, str(exc))
        else:
            payload = self._encoded(lambda: envelopes.answers(list(answers)), "the answers")
        await owner.answer(reply, payload)

    def _encoded(self, build: Any, what: str) -> bytes:
        envelopes = self.owner.envelopes
        try:
            payload: bytes = build()
        except (TypeError, ValueError, OverflowError) as exc:
            return envelopes.error("TypeError", f"{what} cannot cross hosts: {exc}")
        limit = self.owner.max_payload
        if len(payload) > limit:
            return envelopes.error(
                "MessageTooLargeError",
                f"{what} take {len(payload)} bytes, over the broker's max_payload={limit}",
            )
        return payload

    def cancel(self, reply: str) -> None:
        """The caller of the call answered on ``reply`` gave up."""
        task = self.running.get(reply)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
