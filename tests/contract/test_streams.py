"""Streamed answers, on both clients: ``stream()`` and the server's ``respond.stream``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ipc_server import IPCConnection, RemoteError, RequestTimeoutError

from .adapters import Front
from .peer import Peer
from .polling import wait_until


class Rows:
    """The server's ``rows`` command: ``respond.stream`` of ``n`` items from a generator
    (``"async"``: an async generator; ``"fail"``: raises after them; ``"stall"``: waits
    forever after them), recording how far it got and whether it was closed."""

    def __init__(self, server: Peer) -> None:
        self.produced = -1  # the highest index the generator reached
        self.closed = False
        server.commands["rows"] = self.handle

    def handle(self, request: dict[str, Any], respond: Any, connection: IPCConnection) -> None:
        kind = request.get("kind", "plain")
        rows = self.async_rows(request["n"], kind) if kind != "plain" else self.rows(request["n"])
        respond.stream(rows)  # a plain function: no await

    def rows(self, n: int) -> Iterator[Any]:
        try:
            for index in range(n):
                self.produced = index
                yield {"row": index}
        finally:
            self.closed = True

    async def async_rows(self, n: int, kind: str) -> AsyncIterator[Any]:
        try:
            for index in range(n):
                self.produced = index
                yield {"row": index}
            if kind == "fail":
                raise ValueError("disk on fire")
            if kind == "stall":
                await asyncio.Event().wait()
        finally:
            self.closed = True


def rows(n: int) -> list[dict[str, int]]:
    return [{"row": index} for index in range(n)]


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_items_arrive_in_order(front: Front, server: Peer, kind: str) -> None:
    """stream() yields the items of a plain or async iterable in order, credit and all."""
    Rows(server)
    client = front.connected()
    assert list(client.stream({"cmd": "rows", "n": 100, "kind": kind}, window=4)) == rows(100)
    assert list(client.stream({"cmd": "rows", "n": 0, "kind": kind})) == []
    assert client.request("after") == "after"


def test_a_plain_request_gets_one_list_answer(front: Front, server: Peer) -> None:
    """A requester that did not ask for a stream gets the items in one list answer."""
    Rows(server)
    client = front.connected()
    assert client.request({"cmd": "rows", "n": 5}) == rows(5)


def test_a_handler_that_answers_once_is_a_stream_of_its_answer(front: Front, server: Peer) -> None:
    """stream() of a request the handler answers once: a list answer is its items."""
    client = front.connected()
    assert list(client.stream([1, 2, 3])) == [1, 2, 3]  # the peer echoes the request
    assert list(client.stream("one")) == ["one"]


def test_the_timeout_bounds_the_wait_for_each_item(front: Front, server: Peer) -> None:
    """timeout= bounds each item's wait: RequestTimeoutError, and the producer stops."""
    produced = Rows(server)
    client = front.connected()
    items = client.stream({"cmd": "rows", "n": 2, "kind": "stall"}, timeout=0.3)
    assert next(items) == {"row": 0}
    assert next(items) == {"row": 1}
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        next(items)
    assert 0.2 < time.monotonic() - started < 3.0
    wait_until(lambda: produced.closed, "the producer is closed")
    with pytest.raises(StopIteration):
        next(items)
    assert client.request("after") == "after"


def test_a_producer_error_comes_after_the_items_before_it(front: Front, server: Peer) -> None:
    """An exception in the producer reaches the caller as RemoteError, after its items."""
    Rows(server)
    client = front.connected()
    got: list[Any] = []
    with pytest.raises(RemoteError) as raised:
        got.extend(client.stream({"cmd": "rows", "n": 3, "kind": "fail"}))
    assert got == rows(3)
    assert (raised.value.type, raised.value.message) == ("ValueError", "disk on fire")


@pytest.mark.parametrize("window", [1, 8, 64])
def test_the_producer_runs_at_most_window_items_ahead(
    front: Front, server: Peer, window: int
) -> None:
    """Measured on the server: the highest index produced minus the items consumed never
    exceeds the window, and the client never holds more than the window."""
    produced = Rows(server)
    client = front.connected()
    items = client.stream({"cmd": "rows", "n": 300}, window=window)
    consumed = 0
    assert next(items) == {"row": 0}
    consumed += 1
    # Credit comes every window // 2 items consumed: the producer stops at the window
    # beyond the credit it got, and stays there while nothing more is consumed.
    batch = max(1, window // 2)
    reach = window + (consumed // batch) * batch
    wait_until(lambda: produced.produced >= reach, "the producer fills the window")
    assert produced.produced == reach
    assert items.buffered <= window
    for item in items:
        assert item == {"row": consumed}
        consumed += 1
        assert produced.produced - consumed <= window
        assert items.buffered <= window
    assert consumed == 300


def leave_with_an_error(items: Iterator[Any]) -> None:
    """Read three items, then raise KeyError in the loop's body."""
    for count, _ in enumerate(items, 1):
        if count == 3:
            raise KeyError("enough")


@pytest.mark.parametrize("how", ["break", "exception", "close"])
def test_leaving_early_stops_the_producer(front: Front, server: Peer, how: str) -> None:
    """A caller that leaves after 3 items of a million stops the producer: its generator is
    closed, having made little more than a window of items."""
    produced = Rows(server)
    client = front.connected()
    request = {"cmd": "rows", "n": 1_000_000}
    if how == "break":
        for count, _ in enumerate(client.stream(request, window=16), 1):
            if count == 3:
                break
    elif how == "exception":
        with pytest.raises(KeyError):
            leave_with_an_error(client.stream(request, window=16))
    else:
        items = client.stream(request, window=16)
        assert [next(items) for _ in range(3)] == rows(3)
        items.close()
        with pytest.raises(StopIteration):
            next(items)
    wait_until(lambda: produced.closed, "the producer's generator is closed", timeout=5.0)
    assert produced.produced <= 3 + 16 + 1
    assert client.request("after") == "after"


def test_window_must_be_a_positive_int(front: Front, server: Peer) -> None:
    client = front.connected()
    for window in (0, -1, 10_001, 2.5, True):
        with pytest.raises(ValueError, match="window"):
            client.stream("x", window=window)  # type: ignore[arg-type]
