"""The baselines' measured processes for ``python -m benchmarks.instructions --system ...``.

The same workloads as ours, with both ends in one process, built from the
baselines' own code where it can be reused:

``floor``
    ``benchmarks/impl/floor.py`` as it is: its ``FloorServerProtocol`` (with
    ``ServerState``) behind ``loop.create_unix_server`` and its
    ``FloorClientProtocol`` clients, on one event loop (``--loop``).
    ``gather_plain``, ``oneway`` and ``fanout`` are floor's own ``_gather``,
    ``_oneway`` and ``_fanout`` (the server publishes with
    ``ServerState.publish_many``); ``seq`` is floor's request loop without the
    latency clock.

``pyzmq``
    Blocking pyzmq sockets over ``ipc://`` in a temporary folder, one Python
    thread, the socket types, options and orjson bodies of
    ``benchmarks/impl/zmq_impl.py``.  The work of both ends alternates in that
    thread: ``oneway`` PUSH/PULL with the default high-water marks, a batch of
    sends then their receives; ``fanout`` XPUB (verbose) and SUB sockets, a
    batch of publishes then each subscriber's receives, counted once every
    subscription has reached the publisher; ``gather_plain`` DEALER/ROUTER,
    the batch sent, answered by the ROUTER loop, then its replies received;
    ``seq`` REQ/REP.  libzmq's own threads (its I/O thread, its reaper) run
    beside it and are counted apart.

``pyzmq-asyncio``
    ``gather_plain`` with ``zmq.asyncio`` on the event loop: zmq_impl's
    asyncio client (a reader task resolving one future per request, in order)
    and its ROUTER loop as a second task of the same loop.

The pyzmq processes put themselves (and so libzmq's threads, which inherit
it) on one core under ``SCHED_FIFO``.  Under valgrind the threads take turns
anyway, one at a time; how often each one wakes the other, and so part of its
count, depends on where the turns fall.  Time-sliced, that moves with the
kernel's ticks, by a few percent from run to run; first in, first out on one
core, the I/O thread runs exactly when the Python thread waits or valgrind
ends its time slice, the same every run.  Without the right to (no
CAP_SYS_NICE) they stay time-sliced on one core, and the header says so.  In
a plain run on two cores the I/O thread wakes more often, for fewer messages
at a time, than in either.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

WORKLOADS: dict[str, tuple[str, ...]] = {
    "floor": ("gather_plain", "oneway", "fanout", "seq"),
    "pyzmq": ("gather_plain", "oneway", "fanout", "seq"),
    "pyzmq-asyncio": ("gather_plain",),
}
THREADED = frozenset({"pyzmq", "pyzmq-asyncio"})  # systems whose process runs threads
CONNECT_TIMEOUT_S = 30.0


def thread_names() -> list[str]:
    """The process's threads' names, in the order they were created (by thread id)."""
    tasks = sorted(int(t) for t in os.listdir("/proc/self/task"))
    names = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                names.append(f.read().strip())
        except OSError:  # ended meanwhile
            names.append(f"tid {tid}")
    return names


def report(workload: str, n: int, build: str, module: str) -> None:
    """The lines the runner checks: the thread names, then what ran."""
    sys.stdout.write(f"THREADS {json.dumps(thread_names())}\n")
    sys.stdout.write(f"DONE {workload} {n} {build} {module}\n")
    sys.stdout.flush()


def pin_to_one_core() -> str:
    """This thread, and the threads it starts, on one core and first in, first out.

    The threads' turns then repeat run after run.  Returns how it went, for the header.
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:  # not allowed: time-sliced, the counts vary more
        return "one-core"
    return "one-core-SCHED_FIFO"


# ---------------------------------------------------------------------------
# floor


async def floor_main(workload: str, n: int, warmup: int, subscribers: int, batch: int) -> None:
    import orjson

    from benchmarks.config import PAYLOAD, TOPIC
    from benchmarks.impl import floor
    from benchmarks.impl.common import sock_path

    sockdir = tempfile.mkdtemp(prefix="ipci", dir="/tmp")
    path = sock_path(sockdir)
    loop = asyncio.get_running_loop()
    state = floor.ServerState()
    server = await loop.create_unix_server(
        lambda: floor.FloorServerProtocol(state), path, backlog=256
    )
    protos = [await floor._connect(path) for _ in range(subscribers if workload == "fanout" else 1)]
    proto = protos[0]
    request, dumps = proto.request, floor.dumps

    async def run_seq(k: int) -> None:
        for _ in range(k):
            await request(floor.REQ, dumps(PAYLOAD))

    runs: dict[str, Callable[[int], Awaitable[object]]] = {
        "gather_plain": lambda k: floor._gather(proto, k, batch),
        "oneway": lambda k: floor._oneway(proto, k),
        "fanout": lambda k: floor._fanout(protos, k // subscribers),
        "seq": run_seq,
    }
    if workload == "fanout":
        for p in protos:
            if await p.request(floor.SUB, TOPIC.encode()) is not True:
                raise RuntimeError("subscribe did not return True")
    if await request(floor.REQ, dumps(PAYLOAD)) != PAYLOAD:
        raise RuntimeError("unexpected answer to the first request")
    await runs[workload](warmup)
    await runs[workload](n)
    report(workload, n, f"orjson-{orjson.__version__}", floor.__file__)
    server.close()
    shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# pyzmq, blocking sockets


def _wait_readable(sock: Any, deadline: float, what: str) -> None:
    """Poll `sock` for input until `deadline` (time.monotonic)."""
    while not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} in {CONNECT_TIMEOUT_S:.0f} s")


def _zmq_build(scheduling: str) -> str:
    import zmq

    return f"pyzmq-{zmq.__version__},libzmq-{zmq.zmq_version()},{scheduling}"


def pyzmq_main(workload: str, n: int, warmup: int, subscribers: int, batch: int) -> None:
    import zmq

    from benchmarks.config import PAYLOAD, TOPIC
    from benchmarks.impl import zmq_impl
    from benchmarks.impl.common import check_count

    scheduling = pin_to_one_core()
    dumps, loads = zmq_impl.dumps, zmq_impl.loads
    sockdir = tempfile.mkdtemp(prefix="ipci", dir="/tmp")
    url = zmq_impl._url(sockdir)
    ctx = zmq_impl._context()
    body = dumps(PAYLOAD)
    if loads(body) != PAYLOAD:
        raise RuntimeError("orjson does not round-trip the payload")

    if workload == "oneway":
        pull = ctx.socket(zmq.PULL)  # the default high-water marks, as in zmq_impl
        pull.bind(url)
        push = ctx.socket(zmq.PUSH)
        push.connect(url)

        def run(k: int) -> None:
            send, recv = push.send, pull.recv
            count, left = 0, k
            while left > 0:
                m = min(batch, left)
                for _ in range(m):
                    send(dumps(PAYLOAD))
                for _ in range(m):
                    loads(recv())
                    count += 1
                left -= m
            check_count(count, k)

    elif workload == "fanout":
        pub = ctx.socket(zmq.XPUB)
        pub.sndhwm = zmq_impl.UNLIMITED
        pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        pub.bind(url)
        subs = []
        for _ in range(subscribers):
            sub = ctx.socket(zmq.SUB)
            sub.rcvhwm = zmq_impl.UNLIMITED
            sub.connect(url)
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
            subs.append(sub)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        subscribed = 0
        while subscribed < subscribers:  # no message is counted before every SUB is in
            _wait_readable(pub, deadline, "subscription")
            if pub.recv()[:1] == b"\x01":
                subscribed += 1
        topic = TOPIC.encode()
        per_batch = max(1, batch // subscribers)  # publishes per batch

        def run(k: int) -> None:
            send = pub.send_multipart
            left = k // subscribers
            while left > 0:
                m = min(per_batch, left)
                for _ in range(m):
                    send([topic, dumps(PAYLOAD)])
                for sub in subs:
                    recv = sub.recv_multipart
                    for _ in range(m):
                        _topic, data = recv()
                        loads(data)
                left -= m

    elif workload == "gather_plain":
        router, dealer = _router_dealer(zmq, ctx, url)

        def run(k: int) -> None:
            send, recv = dealer.send, dealer.recv
            serve_recv, serve_send = router.recv_multipart, router.send_multipart
            left = k
            while left > 0:
                m = min(batch, left)
                for _ in range(m):
                    send(dumps(PAYLOAD))
                for _ in range(m):  # zmq_impl's ROUTER loop
                    ident, data = serve_recv()
                    serve_send([ident, dumps(loads(data))])
                for _ in range(m):
                    loads(recv())
                left -= m

    elif workload == "seq":
        rep = ctx.socket(zmq.REP)
        rep.bind(url)
        req = ctx.socket(zmq.REQ)
        req.connect(url)

        def run(k: int) -> None:
            for _ in range(k):
                req.send(dumps(PAYLOAD))
                rep.send(dumps(loads(rep.recv())))
                loads(req.recv())

    else:
        raise ValueError(f"no {workload} for pyzmq")
    run(warmup)
    run(n)
    report(workload, n, _zmq_build(scheduling), zmq_impl.__file__)
    shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# pyzmq, zmq.asyncio


async def pyzmq_asyncio_main(
    workload: str, n: int, warmup: int, subscribers: int, batch: int
) -> None:
    import zmq
    import zmq.asyncio

    from benchmarks.config import PAYLOAD
    from benchmarks.impl import zmq_impl

    if workload != "gather_plain":
        raise ValueError(f"no {workload} for zmq.asyncio")
    scheduling = pin_to_one_core()
    dumps, loads = zmq_impl.dumps, zmq_impl.loads
    loop = asyncio.get_running_loop()
    sockdir = tempfile.mkdtemp(prefix="ipci", dir="/tmp")
    url = zmq_impl._url(sockdir)
    ctx = zmq.asyncio.Context()
    router, dealer = _router_dealer(zmq, ctx, url)
    waiters: deque[asyncio.Future[Any]] = deque()

    async def serve() -> None:  # zmq_impl's asyncio server
        recv, send = router.recv_multipart, router.send_multipart
        while True:
            ident, data = await recv()
            await send([ident, dumps(loads(data))])

    async def read() -> None:  # zmq_impl's asyncio client from here on
        recv = dealer.recv
        while True:
            data = await recv()
            waiters.popleft().set_result(loads(data))

    async def request(obj: Any) -> Any:
        future = loop.create_future()
        waiters.append(future)
        await dealer.send(dumps(obj))
        return await future

    async def run(k: int) -> None:
        left = k
        while left > 0:
            m = min(batch, left)
            await asyncio.gather(*(request(PAYLOAD) for _ in range(m)))
            left -= m

    tasks = [loop.create_task(serve()), loop.create_task(read())]
    if await request(PAYLOAD) != PAYLOAD:
        raise RuntimeError("unexpected answer to the first request")
    await run(warmup)
    await run(n)
    report(workload, n, _zmq_build(scheduling), zmq_impl.__file__)
    for task in tasks:
        task.cancel()
    shutil.rmtree(sockdir, ignore_errors=True)


def child(system: str, workload: str, n: int, use_uvloop: bool, **sizes: int) -> None:
    """One measured run of a baseline; `sizes`: warmup, subscribers, batch."""
    from benchmarks.impl.common import run_loop

    if system == "floor":
        run_loop(lambda: floor_main(workload, n, **sizes), use_uvloop)
    elif system == "pyzmq":
        pyzmq_main(workload, n, **sizes)
    elif system == "pyzmq-asyncio":
        run_loop(lambda: pyzmq_asyncio_main(workload, n, **sizes), use_uvloop)
    else:
        raise ValueError(f"unknown system {system}")


def _router_dealer(zmq: Any, ctx: Any, url: str) -> tuple[Any, Any]:
    """A ROUTER bound at ``url`` and a DEALER connected to it, unlimited high-water marks
    (zmq_impl's gather pair), from ``ctx`` (blocking or ``zmq.asyncio``)."""
    from benchmarks.impl import zmq_impl

    router = ctx.socket(zmq.ROUTER)
    router.sndhwm = router.rcvhwm = zmq_impl.UNLIMITED
    router.bind(url)
    dealer = ctx.socket(zmq.DEALER)
    dealer.sndhwm = dealer.rcvhwm = zmq_impl.UNLIMITED
    dealer.connect(url)
    return router, dealer
