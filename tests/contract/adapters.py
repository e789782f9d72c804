"""Both clients behind one blocking interface, so that one suite tests both.

``blocking``: the ``ipc_server.sync.IPCClient`` itself. ``asyncio``: an
``ipc_server.IPCClient`` driven from the test thread: each method runs on an
event loop in a background thread (``asyncio.run_coroutine_threadsafe``) and
is waited for with a deadline, so that a hang fails the test. Arguments are
forwarded unchanged (a signature the client lacks is its ``TypeError``), and
the adapter adds no behaviour of its own. Listeners run where the client runs
them: on the loop thread (asyncio) or on the listener thread (blocking).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import ipc_server
import ipc_server.client
import ipc_server.sync
from ipc_server import IPCClientStatus
from ipc_server.options import Default

from .polling import DEADLINE, wait_until

T = TypeVar("T")

FRONTS = ("asyncio", "blocking")
"""The client implementations the contract runs over."""


# ---------------------------------------------------------------------- the one interface


class Subscription(Protocol):
    """What a test does with the object ``subscription()`` yields."""

    def get(self, timeout: float | None = ...) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Client(Protocol):
    """The blocking interface both fronts are tested through (the blocking client's own)."""

    @property
    def id(self) -> str | None: ...

    @property
    def status(self) -> IPCClientStatus: ...

    @property
    def is_ready(self) -> bool: ...

    @property
    def info(self) -> dict[str, Any]: ...

    @property
    def topics(self) -> list[str]: ...

    @property
    def request_timeout(self) -> float | None: ...

    def connect(self, payload: Any = ..., *, timeout: float | Default | None = ...) -> object: ...

    def request(self, data: Any, timeout: float | Default | None = ...) -> Any: ...

    def ping(self, data: Any = ..., timeout: float | Default | None = ...) -> float: ...

    def send(self, data: Any, *, timeout: float | Default | None = ...) -> None: ...

    def subscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = ...,
        timeout: float | Default | None = ...,
    ) -> bool: ...

    def unsubscribe(
        self,
        topic: str | list[str],
        *,
        group: str | None = ...,
        timeout: float | Default | None = ...,
    ) -> bool: ...

    def publish(
        self, topic: str, message: Any = ..., *, timeout: float | Default | None = ...
    ) -> bool: ...

    def subscription(
        self, topic: str, *, maxsize: int = ..., timeout: float | Default | None = ...
    ) -> AbstractContextManager[Subscription]: ...

    def close(self, reason: Any = ..., *, timeout: float | None = ...) -> bool: ...

    def destroy(self, reason: Any = ...) -> bool: ...

    def on(self, event: str, handler: Callable[..., Any]) -> object: ...

    def once(self, event: str, handler: Callable[..., Any]) -> object: ...

    def off(self, event: str, handler: Callable[..., Any] | None = ...) -> None: ...


# ---------------------------------------------------------------------- the asyncio front


class LoopThread:
    """An asyncio event loop (debug mode) running on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="asyncio front", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float = DEADLINE) -> T:
        """Run ``coro`` on the loop; its result, or what it raised; fail after ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        concurrent.futures.wait([future], timeout)
        if not future.done():
            future.cancel()
            raise AssertionError(f"{what} did not return within {timeout:g} s")
        return future.result()

    def call(self, fn: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
        """Call the plain function ``fn`` on the loop thread (the client's own thread)."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self.run(call(), what)

    def close(self) -> None:
        """Cancel what is left on the loop, stop it, and close it."""

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_the_rest(), "cancelling the tasks left")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(DEADLINE)
            if not self.thread.is_alive():
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()


async def _next(sub: ipc_server.client.Subscription) -> tuple[bool, Any]:
    try:
        return True, await sub.__anext__()
    except StopAsyncIteration:
        return False, None


class AsyncioSubscription:
    """``ipc_server.client.Subscription``, forwarded to the loop."""

    def __init__(self, loop: LoopThread, sub: ipc_server.client.Subscription) -> None:
        self._loop = loop
        self.aio = sub

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.aio.get(*args, **kwargs), "Subscription.get()")

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        more, message = self._loop.run(_next(self.aio), "Subscription.__anext__()")
        if not more:
            raise StopIteration
        return message


class AsyncioClient:
    """``ipc_server.IPCClient``, each method forwarded to the loop and waited for."""

    def __init__(self, loop: LoopThread, client: ipc_server.IPCClient) -> None:
        self._loop = loop
        self.aio = client

    def __repr__(self) -> str:
        return f"<asyncio front {self.aio!r}>"

    @property
    def id(self) -> str | None:
        return self.aio.id

    @property
    def status(self) -> IPCClientStatus:
        return self.aio.status

    @property
    def is_ready(self) -> bool:
        return self.aio.is_ready

    @property
    def info(self) -> dict[str, Any]:
        return self.aio.info

    @property
    def topics(self) -> list[str]:
        return self.aio.topics

    @property
    def request_timeout(self) -> float | None:
        return self.aio.request_timeout

    def connect(self, *args: Any, **kwargs: Any) -> AsyncioClient:
        self._loop.run(self.aio.connect(*args, **kwargs), "connect()")
        return self

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self.aio.request(*args, **kwargs), "request()")

    def ping(self, *args: Any, **kwargs: Any) -> float:
        return self._loop.run(self.aio.ping(*args, **kwargs), "ping()")

    def send(self, *args: Any, **kwargs: Any) -> None:
        self._loop.run(self.aio.send(*args, **kwargs), "send()")

    def subscribe(self, *args: Any, **kwargs: Any) -> bool:
        return self._loop.run(self.aio.subscribe(*args, **kwargs), "subscribe()")

    def unsubscribe(self, *args: Any, **kwargs: Any) -> bool:
        return self._loop.run(self.aio.unsubscribe(*args, **kwargs), "unsubscribe()")

    def publish(self, *args: Any, **kwargs: Any) -> bool:
        return self._loop.run(self.aio.publish(*args, **kwargs), "publish()")

    @contextlib.contextmanager
    def subscription(self, *args: Any, **kwargs: Any) -> Iterator[AsyncioSubscription]:
        manager = self.aio.subscription(*args, **kwargs)
        sub = self._loop.run(manager.__aenter__(), "subscription() entry")
        try:
            yield AsyncioSubscription(self._loop, sub)
        except BaseException as exc:
            if not self._loop.run(
                manager.__aexit__(type(exc), exc, exc.__traceback__), "subscription() exit"
            ):
                raise
        else:
            self._loop.run(manager.__aexit__(None, None, None), "subscription() exit")

    def close(self, *args: Any, **kwargs: Any) -> bool:
        return self._loop.run(self.aio.close(*args, **kwargs), "close()")

    def destroy(self, *args: Any, **kwargs: Any) -> bool:
        return self._loop.call(self.aio.destroy, "destroy()", *args, **kwargs)

    def on(self, event: str, handler: Callable[..., Any]) -> object:
        return self._loop.call(self.aio.on, "on()", event, handler)

    def once(self, event: str, handler: Callable[..., Any]) -> object:
        return self._loop.call(self.aio.once, "once()", event, handler)

    def off(self, event: str, handler: Callable[..., Any] | None = None) -> None:
        self._loop.call(self.aio.off, "off()", event, handler)


# ---------------------------------------------------------------------- the factory


class Front:
    """Makes clients of one front for a test, and ends them afterwards.

    Args:
        name: ``"asyncio"`` or ``"blocking"``.
        path: The server's address; the default ``path=`` of every client made.
    """

    def __init__(self, name: str, path: str) -> None:
        if name not in FRONTS:
            raise ValueError(f"no front {name!r}")
        self.name = name
        self.path = path
        self._loop = LoopThread() if name == "asyncio" else None
        self._clients: list[Client] = []

    def __repr__(self) -> str:
        return f"<Front {self.name}>"

    def client(self, **options: Any) -> Client:
        """A new, unconnected client; ``options`` are the client's keyword options."""
        options.setdefault("path", self.path)
        client: Client
        if self._loop is None:
            client = ipc_server.sync.IPCClient(**options)
        else:
            client = AsyncioClient(self._loop, ipc_server.IPCClient(**options))
        self._clients.append(client)
        return client

    def connected(self, payload: Any = None, **options: Any) -> Client:
        """A new client, connected with ``payload``."""
        client = self.client(**options)
        client.connect(payload)
        return client

    def destroy_all(self) -> None:
        """Destroy every client made (teardown; what fails here was reported by the test)."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.destroy()

    def close(self) -> None:
        """After the server is gone: wait (bounded) for the clients to end, then stop the loop."""

        def ended() -> bool:
            return all(c.status is IPCClientStatus.IDLE for c in self._clients)

        with contextlib.suppress(AssertionError):
            wait_until(ended, "every client ended", DEADLINE / 2)
        if self._loop is not None:
            self._loop.close()
