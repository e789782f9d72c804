"""on, once, off: which listeners run, and in which order."""

from __future__ import annotations

from typing import Any

from .adapters import Front
from .peer import Peer
from .polling import Recorder


def test_listeners_run_in_the_order_added(front: Front, server: Peer) -> None:
    """Listeners of one event run in the order they were added, each with the message."""
    client = front.connected()
    calls: Recorder[tuple[str, Any]] = Recorder()
    client.on("t", lambda m: calls(("first", m)))
    client.on("t", lambda m: calls(("second", m)))
    client.subscribe("t")
    client.publish("t", 1)
    assert calls.wait_for(2, "listener") == [("first", 1), ("second", 1)]


def test_once_runs_once_and_off_removes(front: Front, server: Peer) -> None:
    """A once() listener runs for the first message only; off() removes a listener."""
    client = front.connected()
    once: Recorder[Any] = Recorder()
    removed: Recorder[Any] = Recorder()
    always: Recorder[Any] = Recorder()
    client.once("t", once)
    client.on("t", removed)
    client.on("t", always)
    client.subscribe("t")
    client.publish("t", 1)
    assert always.wait_for(1, "listener") == [1]
    client.off("t", removed)
    client.publish("t", 2)
    assert always.wait_for(2, "listener") == [1, 2]
    assert once.items == [1]
    assert removed.items == [1]


def test_off_without_handler_removes_all(front: Front, server: Peer) -> None:
    """off(event) without a handler removes every listener of that event."""
    client = front.connected()
    gone: Recorder[Any] = Recorder()
    client.on("t", gone)
    client.on("t", gone)
    client.off("t")
    sentinel: Recorder[Any] = Recorder()
    client.on("s", sentinel)
    client.subscribe(["t", "s"])
    client.publish("t", 1)
    client.publish("s", "last")
    assert sentinel.wait_for(1, "sentinel") == ["last"]
    assert gone.items == []
