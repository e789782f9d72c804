"""The calls and surveys a server waits on, without a broker: who ends which wait, and
what a peer's word costs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ipc_server import ConnectionClosedError, RequestTimeoutError
from ipc_server.backplane.members import MAX_MEMBERS
from ipc_server.backplane.pending import Call, Pending, Survey
from ipc_server.backplane.wire import ACK, ANSWERS


class Walked(dict[int, Any]):
    """A dict that counts how often its values were gone through."""

    walks = 0

    def values(self) -> Any:
        Walked.walks += 1
        return super().values()

    def __iter__(self) -> Iterator[int]:
        Walked.walks += 1
        return super().__iter__()


async def settle() -> None:
    """Let the futures' done callbacks run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_member_leaving_ends_what_waits_on_it_and_nothing_else() -> None:
    loop = asyncio.get_running_loop()
    pending = Pending()
    calls = {}
    for n, worker in enumerate(["x", "y", "x", None]):
        token = pending.token()
        calls[n] = call = Call(f"svc{n}", loop.create_future(), 1.0)
        pending.add_call(token, call)
        if worker is not None:
            pending.answer(token, [1, ACK, worker])
    survey = Survey(["x", "y"], loop.create_future(), 1.0)
    pending.add_survey(pending.token(), survey)
    other = Survey(["y"], loop.create_future(), 1.0)
    pending.add_survey(pending.token(), other)

    pending.member_left("x")
    await settle()
    assert [calls[n].future.done() for n in range(4)] == [True, False, True, False]
    with pytest.raises(ConnectionClosedError, match="left during the call to service 'svc0'"):
        calls[0].future.result()
    assert not survey.future.done()  # y has not answered
    assert "left" in str(survey.answers["x"])
    pending.answer(5, [1, ANSWERS, "y", [[True, "fine"]]])
    await settle()
    assert [who for who, _ in survey.future.result()] == ["x", "y"]

    pending.member_left("y")
    await settle()
    assert calls[1].future.done()
    assert not calls[3].future.done()
    assert other.future.done()
    calls[3].future.cancel()
    await settle()
    assert pending.calls == {}
    assert pending.surveys == {}
    assert pending._taken == {}
    assert pending._awaited == {}


async def test_a_goodbye_costs_what_waits_on_that_server() -> None:
    """Any publisher in the namespace can say goodbye for any server id as often as it
    likes: with many waits pending, that must not go through all of them."""
    loop = asyncio.get_running_loop()
    pending = Pending()
    for n in range(1000):
        token = pending.token()
        pending.add_call(token, Call("svc", loop.create_future(), 1.0))
        pending.answer(token, [1, ACK, f"worker{n % 7}"])
        pending.add_survey(pending.token(), Survey(["a", "b"], loop.create_future(), 1.0))
    pending.calls, pending.surveys = Walked(pending.calls), Walked(pending.surveys)
    Walked.walks = 0
    for n in range(1000):
        pending.member_left(f"ghost{n}")
    assert Walked.walks == 0
    pending.member_left("worker3")
    await settle()
    assert sum(call.future.done() for call in pending.calls.values()) == 0  # dropped
    assert len(pending.calls) == 1000 - 143


async def test_a_survey_keeps_at_most_a_clusters_worth_of_answers() -> None:
    """Answers from servers the survey did not expect (one that joined since) are kept,
    up to MAX_MEMBERS in all: past that, made-up servers add nothing; the expected
    still answer."""
    loop = asyncio.get_running_loop()
    pending = Pending()
    token = pending.token()
    survey = Survey(["a"], loop.create_future(), 1.0)
    pending.add_survey(token, survey)
    for n in range(3 * MAX_MEMBERS):
        pending.answer(token, [1, ANSWERS, f"ghost{n}", [[True, n]]])
    assert len(survey.answers) == MAX_MEMBERS
    pending.answer(token, [1, ANSWERS, "a", [[True, "real"]]])
    slots = survey.future.result()
    assert slots[0] == ("a", [[True, "real"]])
    assert len(slots) == MAX_MEMBERS + 1


async def test_a_survey_timeout_names_each_silent_member() -> None:
    loop = asyncio.get_running_loop()
    pending = Pending()
    token = pending.token()
    survey = Survey(["a", "b"], loop.create_future(), 0.5)
    pending.add_survey(token, survey)
    pending.answer(token, [1, ANSWERS, "a", []])
    pending.timed_out(token)
    (_, first), (_, second) = survey.future.result()
    assert first == []
    assert isinstance(second, RequestTimeoutError)
    assert "'b'" in str(second)
