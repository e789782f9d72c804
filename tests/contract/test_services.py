"""Services: workers that serve named calls, on both clients (docs/guide.md, "Patterns")."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ipc_server
from ipc_server import ConnectionClosedError, NoRespondersError, RemoteError, RequestTimeoutError

from .adapters import Front
from .handlers import answering, holding
from .peer import Peer
from .polling import DEADLINE, Background, Recorder, wait_until

WORKER = Path(__file__).with_name("worker.py")


def test_serve_is_true_and_calls_reach_the_worker(front: Front, server: Peer) -> None:
    """serve() is True once the server has it; call() and server.call() get the worker's answer."""
    worker, caller = front.connected(), front.connected()
    assert worker.serve("resize", answering("w")) is True
    assert server.workers("resize") == [worker.id]
    assert caller.call("resize", 21) == ["w", 21]
    assert caller.call("resize") == ["w", None]
    assert server.call("resize", {"x": 1}) == ["w", {"x": 1}]
    assert worker.call("resize", "self") == ["w", "self"]  # a worker may call its own service
    with pytest.raises(TypeError):
        caller.call("resize", object())
    assert caller.call("resize", 2) == ["w", 2]


def test_the_handler_error_is_a_remote_error(front: Front, server: Peer) -> None:
    """A worker's handler that raises gives the caller RemoteError, as a request handler does."""
    worker, caller = front.connected(), front.connected()

    def broken(request: Any, respond: Any) -> None:
        raise ValueError(f"no {request}")

    worker.serve("broken", broken)
    with pytest.raises(RemoteError) as raised:
        caller.call("broken", "luck")
    assert (raised.value.type, raised.value.message) == ("ValueError", "no luck")


def test_calls_go_round_robin_between_idle_workers(front: Front, server: Peer) -> None:
    """Workers with nothing in flight take calls in turn."""
    one, two, caller = front.connected(), front.connected(), front.connected()
    one.serve("job", answering("one"))
    two.serve("job", answering("two"))
    answers = [caller.call("job", n)[0] for n in range(6)]
    assert Counter(answers) == {"one": 3, "two": 3}
    assert all(a != b for a, b in itertools.pairwise(answers))


def test_the_worker_with_fewest_calls_in_flight_gets_the_call(front: Front, server: Peer) -> None:
    """While one worker holds a call, every further call goes to the other one."""
    gate = threading.Event()
    seen: dict[str, Recorder[Any]] = {"one": Recorder(), "two": Recorder()}
    one, two = front.connected(), front.connected()
    for name, worker in (("one", one), ("two", two)):
        worker.serve("job", holding(front, gate, seen[name], lambda r: r == "hold"))
    caller = front.connected()
    try:
        held = Background(lambda: caller.call("job", "hold", timeout=DEADLINE), "the held call")
        wait_until(lambda: len(seen["one"]) + len(seen["two"]) == 1, "the held call arrives")
        busy = "one" if seen["one"].items else "two"
        idle = "two" if busy == "one" else "one"
        others = [front.connected() for _ in range(4)]
        assert [c.call("job", n) for n, c in enumerate(others)] == [0, 1, 2, 3]
        assert seen[busy].items == ["hold"]
        assert seen[idle].items == [0, 1, 2, 3]
    finally:
        gate.set()
    assert held.result() == "hold"


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "before connect"])
def test_serve_as_a_decorator(front: Front, server: Peer, connected: bool) -> None:
    """serve(name) without a handler decorates it; the blocking client registers at once, the
    asyncio client in the background; before connect, connect() registers it."""
    worker = front.connected() if connected else front.client()

    @worker.serve("deco")
    def handler(request: Any, respond: Any) -> None:
        respond(request * 2)

    assert callable(handler)
    if not connected:
        assert server.workers("deco") == []
        worker.connect()
    if front.name == "blocking":
        assert server.workers("deco") == [worker.id]
    wait_until(lambda: server.workers("deco") == [worker.id], "the registration")
    assert front.connected().call("deco", 4) == 8


def test_serve_while_reconnecting_registers_once_reconnected(front: Front, server: Peer) -> None:
    """serve() and the decorator while the client reconnects: registered once it is back
    (the blocking client's calls wait for the reconnect, the asyncio decorator registers in
    the background)."""
    worker = front.connected(retries=None)
    server.close(allow_reconnect=True)
    wait_until(lambda: not worker.is_ready, "the worker lost the server")
    plain = Background(lambda: worker.serve("plain", answering("p"), timeout=DEADLINE), "serve")
    deco = Background(lambda: worker.serve("deco", timeout=DEADLINE)(answering("d")), "deco")
    server.start()
    assert plain.result() is True
    assert callable(deco.result())
    wait_until(lambda: server.workers("deco") == [worker.id], "the decorated registration")
    assert server.workers("plain") == [worker.id]
    caller = front.connected()
    assert (caller.call("plain", 1), caller.call("deco", 2)) == (["p", 1], ["d", 2])


def test_no_worker_is_no_responders_at_once(front: Front, server: Peer) -> None:
    """A call nobody serves fails with NoRespondersError (an IPCError) at once, not a timeout."""
    caller = front.connected()
    started = time.monotonic()
    with pytest.raises(NoRespondersError) as raised:
        caller.call("nobody", 1, timeout=DEADLINE)
    assert time.monotonic() - started < 2.0
    assert isinstance(raised.value, ipc_server.IPCError)
    with pytest.raises(NoRespondersError):
        server.call("nobody")
    assert server.workers("nobody") == []


@pytest.mark.parametrize("name", ["a..b", "a.*", "x.>", ""])
def test_invalid_service_names_are_refused(front: Front, server: Peer, name: str) -> None:
    """serve, unserve and call refuse a name that is not topic-like (or has a wildcard)."""
    client = front.connected()
    with pytest.raises(ValueError, match="invalid service name"):
        client.serve(name, answering(1))
    with pytest.raises(ValueError, match="invalid service name"):
        client.call(name)
    with pytest.raises(ValueError, match="invalid service name"):
        client.unserve(name)


def test_unserve_leaves(front: Front, server: Peer) -> None:
    """unserve() is True for a served name and the server forgets the worker; then False."""
    worker, caller = front.connected(), front.connected()
    worker.serve("job", answering("w"))
    assert worker.unserve("job") is True
    assert server.workers("job") == []
    with pytest.raises(NoRespondersError):
        caller.call("job")
    assert worker.unserve("job") is False


def test_registrations_are_restored_after_a_reconnect(front: Front, server: Peer) -> None:
    """After the server restarts, the worker serves its services again before it is ready."""
    worker = front.connected(retries=None)
    worker.serve("job", answering("w"))
    worker.serve("other", answering("o"))
    server.restart()
    wait_until(lambda: worker.is_ready, "the worker reconnects")
    assert server.workers("job") == [worker.id]
    assert server.workers("other") == [worker.id]
    assert front.connected().call("job", 1) == ["w", 1]


def test_a_worker_killed_mid_call_fails_the_call_at_once(
    front: Front, server: Peer, tmp_path: Path
) -> None:
    """A worker process killed with SIGKILL while it handles a call: the caller gets
    ConnectionClosedError at once (the call is not sent to another worker, nor left to time out)."""
    marker = tmp_path / "called"
    env = dict(os.environ)
    src = str(Path(ipc_server.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), front.name, server.path, str(marker)], env=env
    )
    try:
        wait_until(lambda: marker.with_suffix(".ready").exists(), "the worker process serves")
        assert len(server.workers("hang")) == 1
        caller = front.connected()
        call = Background(lambda: caller.call("hang", timeout=30.0), "the call")
        wait_until(marker.exists, "the call reaches the worker")
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        error = call.exception(timeout=5.0)
        assert isinstance(error, ConnectionClosedError), error
        assert time.monotonic() - killed < 5.0
        wait_until(lambda: server.workers("hang") == [], "the server forgets the worker")
        with pytest.raises(NoRespondersError):
            caller.call("hang", timeout=5.0)
    finally:
        proc.kill()
        proc.wait(DEADLINE)


def test_a_worker_takes_at_most_max_concurrent_requests(front: Front, server: Peer) -> None:
    """With every worker at max_concurrent_requests, a call waits for one within its timeout
    (RequestTimeoutError if none frees up in time), and goes on when one does."""
    server.restart(max_concurrent_requests=2)
    gate = threading.Event()
    seen: Recorder[Any] = Recorder()
    worker = front.connected()
    worker.serve("job", holding(front, gate, seen, lambda r: True))
    callers = [front.connected() for _ in range(4)]
    try:
        first = Background(lambda: callers[0].call("job", "first", timeout=DEADLINE), "first")
        second = Background(lambda: callers[1].call("job", "second", timeout=DEADLINE), "second")
        wait_until(lambda: server.pending(worker.id) == 2, "two calls in flight at the worker")
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            callers[2].call("job", "third", timeout=0.3)
        assert time.monotonic() - started < 3.0
        fourth = Background(lambda: callers[3].call("job", "fourth", timeout=DEADLINE), "fourth")
        assert fourth.still_running(after=0.2)
        assert server.pending(worker.id) == 2
    finally:
        gate.set()
    assert (first.result(), second.result(), fourth.result()) == ("first", "second", "fourth")
    assert sorted(seen.items) == ["first", "fourth", "second"]  # "third" never reached it
