"""Calls and surveys this server waits on across hosts, and who answers them.

No I/O and no clock: the driver creates an entry with a future, feeds it the
answers that arrive on this server's reply subjects, tells it when a member
leaves or the broker connection is lost, and fires its timeout. Each rule
that ends a wait — the answer, the timeout, the worker's departure, the
broker's loss — decides here which error the waiter gets.

A call is answered first by an ``ACK`` naming the worker server that took
it, then by its result; so when that server leaves mid-call the caller learns
at once that the call may have run, and nothing runs it again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import (
    ConnectionClosedError,
    NoRespondersError,
    RemoteError,
    RequestTimeoutError,
)
from .delivery import unindex
from .members import MAX_MEMBERS
from .wire import ACK, ANSWERS, ERR, OK

__all__ = ["Call", "Pending", "Survey", "remote_error"]


def remote_error(type_name: str, text: str) -> BaseException:
    """The error a caller gets for an ``ERR`` answer: the library's own type
    when the worker raised one the caller knows, else ``RemoteError``."""
    if type_name == "NoRespondersError":
        return NoRespondersError("", text)
    return RemoteError(type_name, text)


class Call:
    """A call waiting for its answer."""

    __slots__ = ("future", "service", "timeout", "timer", "worker")

    def __init__(self, service: str, future: asyncio.Future[Any], timeout: float | None) -> None:
        self.service = service
        self.future = future
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.worker: str | None = None


class Survey:
    """A cluster survey waiting for its members' answers."""

    __slots__ = ("answers", "expected", "future", "timeout", "timer")

    def __init__(
        self, expected: list[str], future: asyncio.Future[Any], timeout: float | None
    ) -> None:
        self.expected = expected
        self.future = future
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.answers: dict[str, Any] = {}

    def result(self, missing: BaseException | None = None) -> list[tuple[str, Any]]:
        """The slots: expected members first, then the others that answered."""
        slots: list[tuple[str, Any]] = []
        for server in self.expected:
            if server in self.answers:
                slots.append((server, self.answers[server]))
            else:
                slots.append((server, missing or self.missing(server)))
        slots.extend((s, a) for s, a in self.answers.items() if s not in self.expected)
        return slots

    def missing(self, server: str) -> BaseException:
        return RequestTimeoutError(self.timeout or 0.0, f"survey answer from server {server!r}")

    def complete(self) -> bool:
        return all(server in self.answers for server in self.expected)


class Pending:
    """The calls and surveys of one server, by the token of their reply subject."""

    def __init__(self) -> None:
        self._next = 0
        self.calls: dict[int, Call] = {}
        self.surveys: dict[int, Survey] = {}
        # server -> the tokens of the calls it took, of the surveys that wait for it:
        # a member's leaving (which a peer can say as often as it likes) costs
        # what waits on that member, never a look at every wait.
        self._taken: dict[str, set[int]] = {}
        self._awaited: dict[str, set[int]] = {}

    def token(self) -> int:
        self._next += 1
        return self._next

    def add_call(self, token: int, call: Call) -> None:
        self.calls[token] = call
        call.future.add_done_callback(lambda _: self._drop_call(token))

    def add_survey(self, token: int, survey: Survey) -> None:
        self.surveys[token] = survey
        for server in survey.expected:
            self._awaited.setdefault(server, set()).add(token)
        survey.future.add_done_callback(lambda _: self._drop_survey(token))

    def _drop_call(self, token: int) -> None:
        call = self.calls.pop(token, None)
        if call is not None:
            if call.timer is not None:
                call.timer.cancel()
            if call.worker is not None:
                unindex(self._taken, call.worker, token)

    def _drop_survey(self, token: int) -> None:
        survey = self.surveys.pop(token, None)
        if survey is not None:
            if survey.timer is not None:
                survey.timer.cancel()
            for server in survey.expected:
                unindex(self._awaited, server, token)

    # -- what arrives ---------------------------------------------------

    def no_responders(self, token: int, namespace: str) -> None:
        """The broker says nobody listens on the subject the request went to."""
        call = self.calls.get(token)
        if call is not None and not call.future.done():
            call.future.set_exception(
                NoRespondersError(
                    call.service,
                    f"no worker for service {call.service!r} on any server of namespace "
                    f"{namespace!r}",
                )
            )
        survey = self.surveys.get(token)
        if survey is not None and not survey.future.done():
            survey.future.set_result(survey.result())

    def answer(self, token: int, items: list[Any]) -> None:
        """An answer envelope ``[1, kind, server, ...]`` for ``token``.

        Raises:
            ValueError: The envelope does not have the shape of its kind.
        """
        kind, server = items[1], items[2]
        if not isinstance(server, str):
            raise ValueError("answer without a server id")
        call = self.calls.get(token)
        if call is not None:
            if call.future.done():
                return
            if kind == ACK:
                if call.worker is not None:
                    unindex(self._taken, call.worker, token)
                call.worker = server
                self._taken.setdefault(server, set()).add(token)
            elif kind == OK:
                call.future.set_result(items[3])
            elif kind == ERR:
                call.future.set_exception(remote_error(str(items[3]), str(items[4])))
            else:
                raise ValueError(f"unexpected answer kind {kind!r} to a call")
            return
        survey = self.surveys.get(token)
        if survey is None or survey.future.done():
            return
        if (
            len(survey.answers) >= MAX_MEMBERS
            and server not in survey.answers
            and server not in survey.expected
        ):
            return  # as many servers as a cluster holds answered already: a made-up one
        if kind == ANSWERS:
            answers = items[3]
            if not isinstance(answers, list):
                raise ValueError("survey answers are not a list")
            survey.answers[server] = answers
        elif kind == ERR:
            survey.answers[server] = remote_error(str(items[3]), str(items[4]))
        else:
            raise ValueError(f"unexpected answer kind {kind!r} to a survey")
        if survey.complete() and survey.expected:
            survey.future.set_result(survey.result())

    # -- what ends a wait -----------------------------------------------

    def timed_out(self, token: int) -> None:
        """The timeout of ``token`` ran out."""
        call = self.calls.get(token)
        if call is not None and not call.future.done():
            taken = f", taken by server {call.worker!r}" if call.worker else ""
            call.future.set_exception(
                RequestTimeoutError(call.timeout or 0.0, f"call to service {call.service!r}{taken}")
            )
        survey = self.surveys.get(token)
        if survey is not None and not survey.future.done():
            survey.future.set_result(survey.result())

    def member_left(self, server: str) -> None:
        """``server`` left (goodbye or expired heartbeat): its calls fail, its survey slots fill."""
        calls, surveys = self.calls, self.surveys
        for token in list(self._taken.get(server, ())):
            call = calls[token]
            if not call.future.done():
                call.future.set_exception(
                    ConnectionClosedError(
                        f"server {server!r} left during the call to service "
                        f"{call.service!r}; the call may have run",
                        executed=None,
                    )
                )
        for token in list(self._awaited.get(server, ())):
            survey = surveys[token]
            if server not in survey.answers:
                gone = survey.missing(server)
                gone.args = (f"server {server!r} left (its heartbeat stopped) before answering",)
                survey.answers[server] = gone
                if survey.complete() and not survey.future.done():
                    survey.future.set_result(survey.result())

    def lost(self, reason: str) -> None:
        """The broker connection is gone: every wait ends now."""
        for call in list(self.calls.values()):
            if not call.future.done():
                call.future.set_exception(
                    ConnectionClosedError(
                        f"{reason} during the call to service {call.service!r}; it may have run",
                        executed=None,
                    )
                )
        for survey in list(self.surveys.values()):
            if not survey.future.done():
                survey.future.set_result(
                    survey.result(ConnectionClosedError(f"{reason} during the survey"))
                )
