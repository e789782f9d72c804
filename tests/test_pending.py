"""A request is a future that is also a coroutine: every way asyncio code awaits one works.

Run on the default loop and on uvloop, against a real server whose handler can hold
a request until told to answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from helpers import short_socket_path, wait_until
from ipc_server import IPCClient, IPCConnection, IPCServer, RequestTimeoutError, Respond
from ipc_server.pending import Pending

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def run(loop_name: str, main: Callable[[], Any]) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


class Setup:
    """A server whose handler answers ``{"hold": x}`` only when released, and a client."""

    def __init__(self, path: str) -> None:
        self.server = IPCServer(path=path)
        self.release = asyncio.Event()
        self.held = 0
        self.runs = 0
        self.client = IPCClient(path=path)

        async def handler(request: Any, respond: Respond, connection: IPCConnection) -> None:
            self.runs += 1
            if isinstance(request, dict) and "hold" in request:
                self.held += 1
                await self.release.wait()
                await respond(request["hold"])
            else:
                await respond(request)

        self.server.on("request", handler)

    async def __aenter__(self) -> Setup:
        await self.server.start()
        await self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.destroy()
        await self.server.close()


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_request_is_a_future_and_a_coroutine(loop_name: str) -> None:
    """What request() returns passes asyncio.isfuture and asyncio.iscoroutine."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                pending = s.client.request(1)
                assert isinstance(pending, Pending)
                assert asyncio.isfuture(pending)
                assert asyncio.iscoroutine(pending)
                assert await pending == 1

    run(loop_name, main)


def test_gather_creates_no_task_per_request(loop_name: str) -> None:
    """asyncio.gather of 1,000 requests: the answers, in order, and no task was made for them."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                before = len(asyncio.all_tasks())
                waiting = asyncio.gather(*(s.client.request(i) for i in range(1000)))
                assert len(asyncio.all_tasks()) == before
                assert await waiting == list(range(1000))

    run(loop_name, main)


def test_wait_for_timeout_and_shield(loop_name: str) -> None:
    """wait_for and asyncio.timeout cancel a held request (its entry goes); shield does not."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    await asyncio.wait_for(s.client.request({"hold": 1}), 0.05)
                if sys.version_info >= (3, 11):
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await s.client.request({"hold": 2})
                shielded = s.client.request({"hold": 3})
                assert isinstance(shielded, Pending)
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    await asyncio.wait_for(asyncio.shield(shielded), 0.05)
                assert not shielded.done()
                s.release.set()
                assert await shielded == 3
                proto = s.client._live
                assert proto is not None
                assert proto._pending == {}  # the cancelled ones left the table

    run(loop_name, main)


def test_tasks_and_task_groups_take_it(loop_name: str) -> None:
    """create_task and TaskGroup.create_task run it like a coroutine."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                task = asyncio.create_task(s.client.request("a"))
                assert await task == "a"
                if sys.version_info >= (3, 11):
                    async with asyncio.TaskGroup() as group:
                        first = group.create_task(s.client.request("b"))
                        second = group.create_task(s.client.request("c"))
                    assert (first.result(), second.result()) == ("b", "c")

    run(loop_name, main)


def test_cancelling_before_and_after_the_first_step(loop_name: str) -> None:
    """Cancelled before its task ran, or while it waits: CancelledError, the entry dropped."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                early = asyncio.create_task(s.client.request({"hold": "early"}))
                early.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await early
                late = asyncio.create_task(s.client.request({"hold": "late"}))
                await wait_until(lambda: s.held == 2, "both at the server")
                late.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await late
                direct = s.client.request({"hold": "direct"})
                assert isinstance(direct, Pending)
                assert direct.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await direct
                proto = s.client._live
                assert proto is not None
                assert proto._pending == {}
                s.release.set()
                assert await s.client.request("after") == "after"  # late answers were dropped

    run(loop_name, main)


def test_run_coroutine_threadsafe_from_another_thread(loop_name: str) -> None:
    """From another thread, run_coroutine_threadsafe(client.request(x), loop) answers."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                loop = asyncio.get_running_loop()
                results: list[Any] = []

                def elsewhere() -> None:
                    future = asyncio.run_coroutine_threadsafe(s.client.request("threads"), loop)
                    results.append(future.result(10))

                thread = threading.Thread(target=elsewhere)
                thread.start()
                await wait_until(lambda: results, "the other thread's answer")
                thread.join(10)
                assert results == ["threads"]

    run(loop_name, main)


def test_asyncio_wait_wants_tasks(loop_name: str) -> None:
    """asyncio.wait refuses it as it refuses any coroutine (3.10 only warns, and waits for
    it); wrapped in a task, it works."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                pending = s.client.request("w")
                if sys.version_info < (3, 11):
                    with pytest.warns(DeprecationWarning, match="coroutine objects"):
                        done, _ = await asyncio.wait([pending])
                    assert [t.result() for t in done] == ["w"]
                    pending = s.client.request("w")
                else:
                    with pytest.raises(TypeError):
                        await asyncio.wait([pending])
                done, _ = await asyncio.wait([asyncio.ensure_future(asyncio.shield(pending))])
                assert [t.result() for t in done] == ["w"]

    run(loop_name, main)


def test_errors_come_when_awaited(loop_name: str) -> None:
    """A request that cannot be sent (not encodable) fails when awaited, as a coroutine would."""

    async def main() -> None:
        with short_socket_path() as path:
            async with Setup(path) as s:
                results = await asyncio.gather(
                    s.client.request(object()), s.client.request("ok"), return_exceptions=True
                )
                assert isinstance(results[0], TypeError)
                assert results[1] == "ok"
                with pytest.raises(RequestTimeoutError):
                    await s.client.request({"hold": 9}, timeout=0.05)

    run(loop_name, main)
