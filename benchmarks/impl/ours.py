"""ipc_server through its public API only (docs/guide.md), as a user would write it.

Options: ``uvloop`` (run both ends on uvloop), ``client="sync"`` (the blocking
``ipc_server.sync.IPCClient``), ``codec`` (client codec, e.g. "msgpack").
The library is imported lazily, so a missing or broken library is reported as
an error in its cells instead of stopping the suite.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

from benchmarks.config import GATHER, PAYLOAD, TOPIC, Params
from benchmarks.impl.common import (
    SETTLE_S,
    Result,
    big_more,
    big_payload,
    big_result,
    check_count,
    conn_result,
    countdown,
    now,
    rate_result,
    run_loop,
    seq_result,
    sock_path,
    vm_rss_kib,
)

BIG_TIMEOUT = 120.0  # seconds; the default request timeout (10 s) is for small messages


def _payload_length(reply: Any) -> int:
    """Bytes come back as bytes (msgpack) or in Node's Buffer JSON shape (JSON codec)."""
    if isinstance(reply, (bytes, bytearray, memoryview)):
        return len(reply)
    if isinstance(reply, dict) and isinstance(reply.get("data"), list):
        return len(reply["data"])
    return -1


def _lib() -> Any:
    return importlib.import_module("ipc_server")


def serve(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    ready: Callable[[], None],
) -> None:
    async def main() -> None:
        ipc = _lib()
        server = ipc.IPCServer(path=sock_path(sockdir))
        if workload == "oneway":
            count = 0

            def on_message(message: Any, connection: Any) -> None:
                nonlocal count
                count += 1

            def on_count(request: Any, respond: Any, connection: Any) -> None:
                nonlocal count
                n, count = count, 0
                respond(n)

            server.on("message", on_message)
            server.on("request", on_count)
        elif workload == "fanout":
            tasks: set[asyncio.Task[None]] = set()

            async def publish_many(n: int) -> None:
                for _ in range(n):
                    await server.publish(TOPIC, PAYLOAD)

            async def on_start(request: Any, respond: Any, connection: Any) -> None:
                await respond(True)
                task = asyncio.get_running_loop().create_task(publish_many(int(request["n"])))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            server.on("request", on_start)
        elif workload == "gather_async":
            # What users mostly write: a coroutine handler that awaits respond.
            async def on_async_request(request: Any, respond: Any, connection: Any) -> None:
                await respond(request)

            server.on("request", on_async_request)
        else:
            # A plain function: the cheapest handler (docs/guide.md allows
            # both); a coroutine handler costs one task per request on
            # Python < 3.12, where tasks cannot start eagerly.
            def on_request(request: Any, respond: Any, connection: Any) -> None:
                respond(request)

            server.on("request", on_request)
        await server.start()
        ready()
        await asyncio.Future()

    run_loop(main, bool(options.get("uvloop")))


def client(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    server_pid: int,
) -> Result:
    path = sock_path(sockdir)
    if options.get("client") == "sync":
        return _sync_client(workload, path, params)
    codec_kw: dict[str, Any] = {"codec": options["codec"]} if options.get("codec") else {}

    async def connect() -> Any:
        c = _lib().IPCClient(path=path, **codec_kw)
        await c.connect()
        return c

    async def main() -> Result:
        if workload == "seq_rtt":
            c = await connect()
            if await c.request(PAYLOAD) != PAYLOAD:
                raise RuntimeError("the echo differs from the request")
            await _seq(c, params.seq_warmup)
            return seq_result(await _seq(c, params.seq_n))
        if workload == "pipelined":
            c = await connect()
            await _pipelined(c, params.pipe_warmup, min(params.pipe_window, params.pipe_warmup))
            elapsed = await _pipelined(c, params.pipe_total, params.pipe_window)
            return rate_result(params.pipe_total, elapsed)
        if workload in GATHER:
            c = await connect()
            await _gather(c, params.gather_warmup, params.gather_batch)
            elapsed = await _gather(c, params.gather_total, params.gather_batch)
            return rate_result(params.gather_total, elapsed)
        if workload == "oneway":
            c = await connect()
            await _oneway(c, params.oneway_warmup)
            return rate_result(params.oneway_n, await _oneway(c, params.oneway_n))
        if workload == "fanout":
            clients = [await connect() for _ in range(params.fanout_subs)]
            for c in clients:
                if await c.subscribe(TOPIC) is not True:
                    raise RuntimeError("subscribe did not return True")
            await _fanout(clients, max(10, params.fanout_n // 50))
            elapsed = await _fanout(clients, params.fanout_n)
            return rate_result(params.fanout_n * params.fanout_subs, elapsed)
        if workload == "big":
            c = await connect()
            data = big_payload(params.big_size)
            reply = await c.request(data, timeout=BIG_TIMEOUT)
            if _payload_length(reply) != len(data):
                raise RuntimeError(f"the echo differs from the request ({type(reply).__name__})")
            t0, done = now(), 0
            while big_more(params, done, t0):
                if _payload_length(await c.request(data, timeout=BIG_TIMEOUT)) != len(data):
                    raise RuntimeError("short echo")
                done += 1
            return big_result(params, now() - t0, done)
        if workload == "connections":
            return await _connections(connect, params, server_pid)
        raise ValueError(f"unknown workload {workload}")

    return run_loop(main, bool(options.get("uvloop")))


async def _seq(c: Any, n: int) -> list[int]:
    clock = time.perf_counter_ns
    request = c.request
    lat: list[int] = []
    for _ in range(n):
        t0 = clock()
        await request(PAYLOAD)
        lat.append(clock() - t0)
    return lat


async def _pipelined(c: Any, total: int, window: int) -> float:
    request = c.request
    per, extra = divmod(total, window)

    async def worker(k: int) -> None:
        for _ in range(k):
            await request(PAYLOAD)

    t0 = now()
    await asyncio.gather(*(worker(per + (1 if i < extra else 0)) for i in range(window)))
    return now() - t0


async def _gather(c: Any, total: int, batch: int) -> float:
    request = c.request
    t0 = now()
    left = total
    while left > 0:
        k = min(batch, left)
        await asyncio.gather(*(request(PAYLOAD) for _ in range(k)))
        left -= k
    return now() - t0


async def _oneway(c: Any, n: int) -> float:
    send = c.send
    t0 = now()
    for _ in range(n):
        await send(PAYLOAD)
    count = await c.request({"cmd": "count"})
    elapsed = now() - t0
    check_count(count, n)
    return elapsed


async def _fanout(clients: list[Any], n: int) -> float:
    on_message, done = countdown(n * len(clients))
    for c in clients:
        c.on(TOPIC, on_message)
    t0 = now()
    await clients[0].request({"cmd": "fanout", "n": n})
    await done
    elapsed = now() - t0
    for c in clients:
        c.off(TOPIC, on_message)
    return elapsed


async def _connections(connect: Callable[[], Any], params: Params, server_pid: int) -> Result:
    keep = [await connect()]
    await keep[0].request(PAYLOAD)
    await asyncio.sleep(SETTLE_S)
    before = vm_rss_kib(server_pid)
    left = params.conn_n
    while left:
        k = min(params.conn_batch, left)
        keep += await asyncio.gather(*(connect() for _ in range(k)))
        left -= k
    await asyncio.sleep(SETTLE_S)
    after = vm_rss_kib(server_pid)
    return conn_result(params.conn_n, before, after)


def _sync_client(workload: str, path: str, params: Params) -> Result:
    sync = importlib.import_module("ipc_server.sync")
    c = sync.IPCClient(path=path)
    c.connect()
    if workload != "seq_rtt":
        raise ValueError(f"the blocking client is measured for seq_rtt only, not {workload}")
    if c.request(PAYLOAD) != PAYLOAD:
        raise RuntimeError("the echo differs from the request")
    request = c.request
    clock = time.perf_counter_ns

    def seq(n: int) -> list[int]:
        lat: list[int] = []
        for _ in range(n):
            t0 = clock()
            request(PAYLOAD)
            lat.append(clock() - t0)
        return lat

    seq(params.seq_warmup)
    return seq_result(seq(params.seq_n))
