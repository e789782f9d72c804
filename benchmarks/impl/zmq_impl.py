"""pyzmq over ipc://, blocking sockets, orjson bodies.

seq_rtt REQ/REP, pipelined DEALER/ROUTER, gather_* DEALER/ROUTER in batches
(send the batch, then receive its replies), oneway PUSH/PULL (count confirmed
on a REQ/REP side channel), fanout XPUB/SUB, big REQ/REP with copy=False,
connections ROUTER with one DEALER socket per client.

With the option ``asyncio`` (the gather_* workloads only), both ends use
``zmq.asyncio`` instead: the client gathers request coroutines, each sending
its body and awaiting a future that a reader task resolves in order (a ROUTER
answers one DEALER in order); the server is the usual
``await recv_multipart()`` / ``await send_multipart()`` loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.config import GATHER, PAYLOAD, TOPIC, Params
from benchmarks.impl.common import (
    CONTROL_SOCKET,
    SETTLE_S,
    Result,
    big_more,
    big_payload,
    big_result,
    check_count,
    conn_result,
    now,
    rate_result,
    run_loop,
    seq_result,
    sock_path,
    vm_rss_kib,
)

dumps = orjson.dumps
loads = orjson.loads

UNLIMITED = 0  # high-water mark: never drop, never block on queue length


def _url(sockdir: str, name: str | None = None) -> str:
    return "ipc://" + (sock_path(sockdir, name) if name else sock_path(sockdir))


def _context(max_sockets: int = 1024) -> Any:
    import zmq

    ctx = zmq.Context()
    if max_sockets > 1000:
        ctx.set(zmq.MAX_SOCKETS, max_sockets)
    return ctx


def serve(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    ready: Callable[[], None],
) -> None:
    import zmq

    if options.get("asyncio"):
        _serve_asyncio(workload, sockdir, options, ready)
        return
    ctx = _context()
    if workload in ("seq_rtt", "big"):
        rep = ctx.socket(zmq.REP)
        rep.bind(_url(sockdir))
        ready()
        if workload == "seq_rtt":
            while True:
                rep.send(dumps(loads(rep.recv())))
        while True:
            rep.send(rep.recv(copy=False), copy=False)
    elif workload in ("pipelined", "connections", *GATHER):
        router = ctx.socket(zmq.ROUTER)
        router.sndhwm = router.rcvhwm = UNLIMITED
        router.bind(_url(sockdir))
        ready()
        while True:
            ident, body = router.recv_multipart()
            router.send_multipart([ident, dumps(loads(body))])
    elif workload == "oneway":
        _serve_oneway(ctx, sockdir, ready)
    elif workload == "fanout":
        _serve_fanout(ctx, sockdir, params, ready)
    else:
        raise ValueError(f"unknown workload {workload}")


def _serve_asyncio(
    workload: str, sockdir: str, options: dict[str, Any], ready: Callable[[], None]
) -> None:
    import zmq
    import zmq.asyncio

    if workload not in GATHER:
        raise ValueError(f"no {workload} for zmq.asyncio")

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.sndhwm = router.rcvhwm = UNLIMITED
        router.bind(_url(sockdir))
        ready()
        recv, send = router.recv_multipart, router.send_multipart
        while True:
            ident, body = await recv()
            await send([ident, dumps(loads(body))])

    run_loop(main, bool(options.get("uvloop")))


def _serve_oneway(ctx: Any, sockdir: str, ready: Callable[[], None]) -> None:
    import zmq

    pull = ctx.socket(zmq.PULL)
    pull.bind(_url(sockdir))
    ctl = ctx.socket(zmq.REP)
    ctl.bind(_url(sockdir, CONTROL_SOCKET))
    ready()
    count = 0
    want: int | None = None  # a pending "tell me when you have n" request
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(ctl, zmq.POLLIN)
    recv = pull.recv
    while True:
        events = dict(poller.poll())
        if pull in events:
            while True:  # drain what is there
                try:
                    body = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                loads(body)
                count += 1
        if ctl in events and want is None:
            want = int(ctl.recv())
            poller.unregister(ctl)
        if want is not None and count >= want:
            ctl.send(str(count).encode())
            count = 0
            want = None
            poller.register(ctl, zmq.POLLIN)


def _serve_fanout(ctx: Any, sockdir: str, params: Params, ready: Callable[[], None]) -> None:
    import zmq

    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = UNLIMITED
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.bind(_url(sockdir))
    ctl = ctx.socket(zmq.REP)
    ctl.bind(_url(sockdir, CONTROL_SOCKET))
    ready()
    subscribed = 0
    while subscribed < params.fanout_subs:  # avoid the slow-joiner loss: wait for every SUB
        if pub.recv()[:1] == b"\x01":
            subscribed += 1
    topic = TOPIC.encode()
    send = pub.send_multipart
    while True:
        n = int(ctl.recv())
        ctl.send(b"ok")
        for _ in range(n):
            send([topic, dumps(PAYLOAD)])


def client(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    server_pid: int,
) -> Result:
    import zmq

    if options.get("asyncio"):
        return _asyncio_client(workload, sockdir, params, options)
    if workload == "seq_rtt":
        ctx = _context()
        req = ctx.socket(zmq.REQ)
        req.connect(_url(sockdir))

        def seq(n: int) -> list[int]:
            clock = time.perf_counter_ns
            lat: list[int] = []
            for _ in range(n):
                t0 = clock()
                req.send(dumps(PAYLOAD))
                loads(req.recv())
                lat.append(clock() - t0)
            return lat

        seq(params.seq_warmup)
        return seq_result(seq(params.seq_n))
    if workload == "pipelined":
        ctx = _context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.sndhwm = dealer.rcvhwm = UNLIMITED
        dealer.connect(_url(sockdir))

        def pipelined(total: int, window: int) -> float:
            send, recv = dealer.send, dealer.recv
            t0 = now()
            sent = min(window, total)
            for _ in range(sent):
                send(dumps(PAYLOAD))
            for _ in range(total):
                loads(recv())
                if sent < total:
                    send(dumps(PAYLOAD))
                    sent += 1
            return now() - t0

        pipelined(params.pipe_warmup, params.pipe_window)
        return rate_result(params.pipe_total, pipelined(params.pipe_total, params.pipe_window))
    if workload in GATHER:
        ctx = _context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.sndhwm = dealer.rcvhwm = UNLIMITED
        dealer.connect(_url(sockdir))

        def batches(total: int, batch: int) -> float:
            send, recv = dealer.send, dealer.recv
            t0 = now()
            left = total
            while left > 0:
                k = min(batch, left)
                for _ in range(k):
                    send(dumps(PAYLOAD))
                for _ in range(k):
                    loads(recv())
                left -= k
            return now() - t0

        batches(params.gather_warmup, params.gather_batch)
        return rate_result(params.gather_total, batches(params.gather_total, params.gather_batch))
    if workload == "oneway":
        ctx = _context()
        push = ctx.socket(zmq.PUSH)
        push.connect(_url(sockdir))
        ctl = ctx.socket(zmq.REQ)
        ctl.connect(_url(sockdir, CONTROL_SOCKET))

        def oneway(n: int) -> float:
            send = push.send
            t0 = now()
            for _ in range(n):
                send(dumps(PAYLOAD))
            ctl.send(str(n).encode())
            count = int(ctl.recv())
            elapsed = now() - t0
            check_count(count, n)
            return elapsed

        oneway(params.oneway_warmup)
        return rate_result(params.oneway_n, oneway(params.oneway_n))
    if workload == "fanout":
        return _fanout_client(sockdir, params)
    if workload == "big":
        ctx = _context()
        req = ctx.socket(zmq.REQ)
        req.connect(_url(sockdir))
        data = big_payload(params.big_size)
        req.send(data, copy=False)
        req.recv(copy=False)
        t0, done = now(), 0
        while big_more(params, done, t0):
            req.send(data, copy=False)
            reply = req.recv(copy=False)
            if len(reply.buffer) != len(data):
                raise RuntimeError("short echo")
            done += 1
        return big_result(params, now() - t0, done)
    if workload == "connections":
        return _connections_client(sockdir, params, server_pid)
    raise ValueError(f"unknown workload {workload}")


def _asyncio_client(workload: str, sockdir: str, params: Params, options: dict[str, Any]) -> Result:
    import asyncio
    from collections import deque

    import zmq
    import zmq.asyncio

    if workload not in GATHER:
        raise ValueError(f"no {workload} for zmq.asyncio")

    async def main() -> Result:
        loop = asyncio.get_running_loop()
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.sndhwm = dealer.rcvhwm = UNLIMITED
        dealer.connect(_url(sockdir))
        waiters: deque[asyncio.Future[Any]] = deque()

        async def read() -> None:
            recv = dealer.recv
            while True:
                body = await recv()
                waiters.popleft().set_result(loads(body))

        async def request(obj: Any) -> Any:
            future = loop.create_future()
            waiters.append(future)
            await dealer.send(dumps(obj))
            return await future

        async def batches(total: int, batch: int) -> float:
            t0 = now()
            left = total
            while left > 0:
                k = min(batch, left)
                await asyncio.gather(*(request(PAYLOAD) for _ in range(k)))
                left -= k
            return now() - t0

        reader = loop.create_task(read())
        await batches(params.gather_warmup, params.gather_batch)
        elapsed = await batches(params.gather_total, params.gather_batch)
        reader.cancel()
        return rate_result(params.gather_total, elapsed)

    return run_loop(main, bool(options.get("uvloop")))


def _fanout_client(sockdir: str, params: Params) -> Result:
    import zmq

    ctx = _context()
    subs = []
    poller = zmq.Poller()
    for _ in range(params.fanout_subs):
        sub = ctx.socket(zmq.SUB)
        sub.rcvhwm = UNLIMITED
        sub.connect(_url(sockdir))
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
        poller.register(sub, zmq.POLLIN)
        subs.append(sub)
    ctl = ctx.socket(zmq.REQ)
    ctl.connect(_url(sockdir, CONTROL_SOCKET))

    def fanout(n: int) -> float:
        total = n * len(subs)
        got = 0
        t0 = now()
        ctl.send(str(n).encode())  # answered once the publisher has seen every subscription
        ctl.recv()
        while got < total:
            for sock in dict(poller.poll(10_000)):
                while True:
                    try:
                        _topic, body = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    loads(body)
                    got += 1
        return now() - t0

    fanout(max(10, params.fanout_n // 50))
    elapsed = fanout(params.fanout_n)
    return rate_result(params.fanout_n * params.fanout_subs, elapsed)


def _connections_client(sockdir: str, params: Params, server_pid: int) -> Result:
    import zmq

    ctx = _context(max_sockets=params.conn_n + 64)
    dealers: list[Any] = []

    def open_batch(k: int) -> None:
        batch = []
        poller = zmq.Poller()
        for _ in range(k):
            d = ctx.socket(zmq.DEALER)
            d.connect(_url(sockdir))
            d.send(dumps(PAYLOAD))  # answered only once the connection exists
            poller.register(d, zmq.POLLIN)
            batch.append(d)
        pending = set(batch)
        deadline = time.monotonic() + 30
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} DEALER sockets got no reply")
            for sock in dict(poller.poll(1000)):
                loads(sock.recv())
                pending.discard(sock)
                poller.unregister(sock)
        dealers.extend(batch)

    open_batch(1)
    time.sleep(SETTLE_S)
    before = vm_rss_kib(server_pid)
    left = params.conn_n
    while left:
        k = min(params.conn_batch, left)
        open_batch(k)
        left -= k
    time.sleep(SETTLE_S)
    after = vm_rss_kib(server_pid)
    return conn_result(params.conn_n, before, after)
