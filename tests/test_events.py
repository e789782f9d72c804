"""The event emitter: ordering, coroutine listeners, STOP and error reporting (docs/guide.md)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from helpers import within
from ipc_server import STOP
from ipc_server.events import EventEmitter, Stop, Tasks, start_task

EAGER = sys.version_info >= (3, 12)


# --------------------------------------------------------------------------- on / once / off


def test_on_calls_listener_with_args() -> None:
    """on() adds a listener that emit() calls with the emitted arguments; emit returns True."""
    em = EventEmitter()
    calls: list[tuple[Any, ...]] = []

    def handler(*args: Any) -> None:
        calls.append(args)

    assert em.on("x", handler) is handler
    assert em.emit("x", 1, "two") is True
    assert em.emit("x") is True
    assert calls == [(1, "two"), ()]


def test_emit_without_listeners_returns_false() -> None:
    """emit() returns False when the event has no listeners, also after they were removed."""
    em = EventEmitter()
    assert em.emit("nothing") is False
    em.on("x", lambda: None)
    em.off("x")
    assert em.emit("x") is False


def test_once_runs_a_single_time() -> None:
    """A once() listener runs on the first emit only; on() listeners beside it keep running."""
    em = EventEmitter()
    calls: list[str] = []
    em.once("x", lambda: calls.append("once"))
    em.on("x", lambda: calls.append("on"))
    assert em.listener_count("x") == 2
    em.emit("x")
    em.emit("x")
    assert calls == ["once", "on", "on"]
    assert em.listener_count("x") == 1


def test_once_alone_then_no_listeners() -> None:
    """After its only once() listener ran, the event has no listeners left."""
    em = EventEmitter()
    calls: list[int] = []
    em.once("x", calls.append)
    assert em.emit("x", 1) is True
    assert em.emit("x", 2) is False
    assert calls == [1]


def test_off_removes_one_listener() -> None:
    """off(event, handler) removes that handler (one registration) and keeps the others."""
    em = EventEmitter()
    calls: list[str] = []

    def a() -> None:
        calls.append("a")

    def b() -> None:
        calls.append("b")

    em.on("x", a)
    em.on("x", b)
    em.on("x", a)
    em.off("x", a)
    em.emit("x")
    assert calls == ["b", "a"]
    em.off("x", lambda: None)  # not registered: no-op
    em.off("unknown", a)
    assert em.listener_count("x") == 2


def test_off_without_handler_removes_all() -> None:
    """off(event) removes every listener of that event and no other event's."""
    em = EventEmitter()
    em.on("x", lambda: None)
    em.once("x", lambda: None)
    em.on("y", lambda: None)
    em.off("x")
    assert em.listener_count("x") == 0
    assert em.listener_count("y") == 1


def test_decorator_form() -> None:
    """on(event) and once(event) without a handler are decorators returning the function."""
    em = EventEmitter()
    calls: list[str] = []

    @em.on("x")
    def handler(value: str) -> None:
        calls.append(value)

    @em.once("x")
    def first(value: str) -> None:
        calls.append("once:" + value)

    em.emit("x", "a")
    em.emit("x", "b")
    assert calls == ["a", "once:a", "b"]
    assert callable(handler)
    assert callable(first)


def test_bad_arguments_rejected() -> None:
    """A non-str event name or a non-callable handler is a TypeError at on()."""
    em = EventEmitter()
    with pytest.raises(TypeError):
        em.on(1, lambda: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        em.on("x", 42)  # type: ignore[call-overload]


def test_listeners_run_in_order_added() -> None:
    """Listeners of one event run in the order they were added."""
    em = EventEmitter()
    calls: list[int] = []
    for i in range(10):
        em.on("x", lambda i=i: calls.append(i))
    em.emit("x")
    assert calls == list(range(10))


def test_listener_added_during_emit_runs_next_time() -> None:
    """A listener added by a listener during emit() does not run in that same emit."""
    em = EventEmitter()
    calls: list[str] = []

    def adder() -> None:
        calls.append("adder")
        em.on("x", lambda: calls.append("late"))

    em.once("x", adder)
    em.emit("x")
    assert calls == ["adder"]
    em.emit("x")
    assert calls == ["adder", "late"]


# --------------------------------------------------------------------------- coroutines


async def test_async_listener_awaited_before_next() -> None:
    """A coroutine listener is awaited to its end before the next listener runs."""
    em = EventEmitter()
    calls: list[str] = []
    done = asyncio.Event()

    def sync_first() -> None:
        calls.append("sync-1")

    async def slow() -> None:
        calls.append("async-start")
        await asyncio.sleep(0.01)
        calls.append("async-end")

    async def quick() -> None:
        calls.append("async-quick")

    def sync_last() -> None:
        calls.append("sync-2")
        done.set()

    for fn in (sync_first, slow, quick, sync_last):
        em.on("x", fn)
    assert em.emit("x") is True
    if EAGER:
        assert calls == ["sync-1", "async-start"]  # suspended: the rest waits for it
    else:
        assert calls == ["sync-1"]  # the coroutine's task starts next iteration
    await within(done.wait())
    assert calls == ["sync-1", "async-start", "async-end", "async-quick", "sync-2"]


async def test_suspending_listener_continues_in_task() -> None:
    """emit() returns while a listener is suspended; it and the rest of the chain finish later."""
    em = EventEmitter()
    calls: list[str] = []
    gate = asyncio.Event()
    done = asyncio.Event()

    async def waits() -> None:
        calls.append("waiting")
        await gate.wait()
        calls.append("resumed")

    def after() -> None:
        calls.append("after")
        done.set()

    em.on("x", waits)
    em.on("x", after)
    em.emit("x")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert calls == ["waiting"]
    gate.set()
    await within(done.wait())
    assert calls == ["waiting", "resumed", "after"]


@pytest.mark.skipif(not EAGER, reason="eager tasks exist from Python 3.12")
async def test_async_listener_that_never_suspends_runs_inside_emit() -> None:
    """A coroutine listener that does not suspend has finished (with the chain) when emit returns."""
    em = EventEmitter()
    calls: list[str] = []

    async def immediate(value: int) -> None:
        calls.append(f"immediate {value}")

    em.on("x", immediate)
    em.on("x", lambda value: calls.append(f"sync {value}"))
    tasks_before = asyncio.all_tasks()
    em.emit("x", 7)
    assert calls == ["immediate 7", "sync 7"]
    assert asyncio.all_tasks() == tasks_before


async def test_two_emits_with_suspending_listeners_interleave() -> None:
    """Each emit() runs its own chain: a suspended chain does not hold up the next emit."""
    em = EventEmitter()
    calls: list[str] = []
    gates = {1: asyncio.Event(), 2: asyncio.Event()}
    finished = asyncio.Event()

    async def handler(n: int) -> None:
        calls.append(f"start {n}")
        await gates[n].wait()
        calls.append(f"end {n}")
        if n == 1:
            finished.set()

    em.on("x", handler)
    em.emit("x", 1)
    em.emit("x", 2)
    await asyncio.sleep(0)  # on Python < 3.12 the tasks start in the next iteration
    assert calls == ["start 1", "start 2"]
    gates[2].set()
    await asyncio.sleep(0.01)
    assert calls == ["start 1", "start 2", "end 2"]
    gates[1].set()
    await within(finished.wait())
    assert calls[-1] == "end 1"


# --------------------------------------------------------------------------- STOP


def test_stop_stops_the_chain() -> None:
    """A listener returning STOP stops the listeners after it for this emit only."""
    em = EventEmitter()
    calls: list[str] = []
    em.on("x", lambda: calls.append("a"))
    em.on("x", lambda: STOP)
    em.on("x", lambda: calls.append("never"))
    em.emit("x")
    em.emit("x")
    assert calls == ["a", "a"]


async def test_async_stop_after_suspending_stops_the_chain() -> None:
    """A coroutine listener returning STOP after suspending stops the rest of the chain."""
    em = EventEmitter()
    calls: list[str] = []
    returned = asyncio.Event()

    async def stopper() -> Stop:
        await asyncio.sleep(0)
        calls.append("stopper")
        returned.set()
        return STOP

    em.on("x", stopper)
    em.on("x", lambda: calls.append("never"))
    em.emit("x")
    await within(returned.wait())
    await asyncio.sleep(0.01)
    assert calls == ["stopper"]


def test_stop_is_exported_singleton() -> None:
    """STOP is one value, with a readable repr."""
    assert STOP is Stop.STOP
    assert repr(STOP) == "STOP"


# --------------------------------------------------------------------------- errors


def test_exception_reported_on_error_and_chain_goes_on() -> None:
    """A listener's exception goes to the error event; the next listeners still run."""
    em = EventEmitter()
    errors: list[BaseException] = []
    calls: list[str] = []
    boom = ValueError("boom")
    em.on("error", errors.append)

    def bad() -> None:
        raise boom

    em.on("x", bad)
    em.on("x", lambda: calls.append("after"))
    assert em.emit("x") is True
    assert errors == [boom]
    assert calls == ["after"]


async def test_async_exception_after_suspending_reported_and_chain_goes_on() -> None:
    """A coroutine listener raising after it suspended is reported; the chain goes on."""
    em = EventEmitter()
    errors: list[BaseException] = []
    done = asyncio.Event()
    em.on("error", errors.append)

    async def bad() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    em.on("x", bad)
    em.on("x", done.set)
    em.emit("x")
    await within(done.wait())
    assert len(errors) == 1
    assert isinstance(errors[0], KeyError)


async def test_async_exception_before_suspending_reported() -> None:
    """A coroutine listener raising at once is reported on error like a plain one."""
    em = EventEmitter()
    errors: list[BaseException] = []
    calls: list[str] = []
    done = asyncio.Event()
    em.on("error", errors.append)

    async def bad() -> None:
        raise RuntimeError("now")

    def after() -> None:
        calls.append("after")
        done.set()

    em.on("x", bad)
    em.on("x", after)
    em.emit("x")
    await within(done.wait())
    assert [type(e) for e in errors] == [RuntimeError]
    assert calls == ["after"]


def test_coroutine_listener_without_loop_is_reported() -> None:
    """Emitting to a coroutine listener with no running loop reports a clear error, no warning."""
    em = EventEmitter()
    errors: list[BaseException] = []
    em.on("error", errors.append)

    async def needs_loop() -> None:
        pass

    em.on("x", needs_loop)
    em.emit("x")
    assert len(errors) == 1
    assert "running event loop" in str(errors[0])


def test_exception_without_error_listener_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """With no error listener, a listener's exception is logged, not raised from emit()."""
    em = EventEmitter()

    def bad() -> None:
        raise ValueError("unheard")

    em.on("x", bad)
    with caplog.at_level(logging.ERROR, logger="ipc_server"):
        assert em.emit("x") is True
    assert any(r.exc_info and r.exc_info[1] is not None for r in caplog.records)
    assert "'x'" in caplog.text


def test_exception_in_error_listener_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An error listener that raises is logged, never re-reported on error (no recursion)."""
    em = EventEmitter()
    calls: list[BaseException] = []

    def bad_error_handler(exc: BaseException) -> None:
        calls.append(exc)
        raise RuntimeError("in error handler")

    def bad() -> None:
        raise ValueError("first")

    em.on("error", bad_error_handler)
    em.on("x", bad)
    with caplog.at_level(logging.ERROR, logger="ipc_server"):
        em.emit("x")
    assert [type(e) for e in calls] == [ValueError]
    assert "'error'" in caplog.text


# --------------------------------------------------------------------------- start_task


async def test_start_task_runs_and_is_tracked() -> None:
    """start_task runs a coroutine as a task kept in ``tasks`` until it is done."""
    calls: list[str] = []

    async def suspends() -> str:
        calls.append("first part")
        await asyncio.sleep(0)
        calls.append("second part")
        return "result"

    tasks = Tasks()
    task = start_task(suspends(), tasks)
    assert task is not None
    assert task in tasks
    assert await within(task) == "result"
    assert calls == ["first part", "second part"]
    await asyncio.sleep(0)  # done callbacks run
    assert tasks == set()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks exist from Python 3.12")
async def test_start_task_is_eager_on_312() -> None:
    """On 3.12+ a coroutine that never suspends finishes inside start_task, leaving no task behind."""
    calls: list[str] = []

    async def immediate() -> None:
        calls.append("ran")

    tasks = Tasks()
    assert start_task(immediate(), tasks) is None
    assert calls == ["ran"]
    assert tasks == set()


async def test_start_task_cancellation_reaches_coroutine() -> None:
    """Cancelling the task throws CancelledError into the coroutine itself."""
    calls: list[str] = []
    started = asyncio.Event()

    async def waits_forever() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            calls.append("cancelled")
            raise
        finally:
            calls.append("cleanup")

    task = start_task(waits_forever())
    assert task is not None
    await within(started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert calls == ["cancelled", "cleanup"]


async def test_listener_can_use_asyncio_timeout() -> None:
    """A coroutine listener emitted from a loop callback can use asyncio.wait_for (it has a task)."""
    em = EventEmitter()
    results: list[str] = []
    done = asyncio.Event()

    async def handler() -> None:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            results.append("timed out")
        done.set()

    em.on("x", handler)
    asyncio.get_running_loop().call_soon(em.emit, "x")  # as from data_received
    await within(done.wait())
    assert results == ["timed out"]


async def test_listener_runs_as_current_task() -> None:
    """A coroutine listener sees one current task, the same before and after it suspends."""
    em = EventEmitter()
    seen: list[asyncio.Task[Any] | None] = []
    done = asyncio.Event()

    async def handler() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        done.set()

    em.on("x", handler)
    asyncio.get_running_loop().call_soon(em.emit, "x")  # as from data_received
    await within(done.wait())
    assert seen[0] is not None
    assert seen[0] is seen[1]


async def test_tests_run_in_asyncio_debug_mode() -> None:
    """The test suite's event loops run in asyncio debug mode (conftest.py)."""
    assert asyncio.get_running_loop().get_debug()
