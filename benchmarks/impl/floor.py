"""The floor: a bare asyncio.Protocol with a 4-byte length prefix and orjson bodies.

This is what a pure-Python asyncio design cannot beat by much, written as
tightly as we can: every complete frame of one ``data_received`` call is
decoded in place (bytes or bytearray + offset, no copy per frame), the replies
it produces go out in one write, and writers respect ``pause_writing``.

A frame is ``>I`` length (of what follows), one kind byte, then the body.
Both ends do the work a real messaging layer must: the server decodes every
request and encodes every reply; the client encodes every request and decodes
every reply.  Replies come back in order on a connection, so no nonces.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.config import PAYLOAD, TOPIC, Params
from benchmarks.impl.common import (
    SETTLE_S,
    Result,
    big_payload,
    big_result,
    conn_result,
    now,
    rate_result,
    run_loop,
    seq_result,
    sock_path,
    vm_rss_kib,
)

LEN = struct.Struct(">I")
HDR = struct.Struct(">IB")

REQ = 1  # JSON request -> RESP with the same object
RESP = 2
MSG = 3  # one-way JSON message, counted
COUNT = 4  # -> RESP with the count of MSG since the last COUNT
SUB = 5  # body: topic (UTF-8) -> RESP true
PUB = 6  # server -> subscriber: {"pub": topic, "message": m}
START = 7  # {"topic", "n"} -> RESP true, then the server publishes n messages
RAW = 8  # raw bytes request -> RAWRESP with the same bytes
RAWRESP = 9

PUBLISH_BATCH = 64  # publishes framed per loop iteration before writing to subscribers

dumps = orjson.dumps
loads = orjson.loads


def frame(kind: int, body: bytes) -> bytes:
    return HDR.pack(len(body) + 1, kind) + body


class FrameProtocol(asyncio.Protocol):
    """Length-prefixed frames in, coalesced frames out, with write backpressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data  # fast path: parse the chunk itself, keep only a partial tail
        n = len(src)
        pos = 0
        mv = memoryview(src)
        unpack = LEN.unpack_from
        on_frame = self.on_frame
        while n - pos >= 5:
            (length,) = unpack(src, pos)
            end = pos + 4 + length
            if end > n:
                break
            on_frame(src[pos + 4], mv[pos + 5 : end])
            pos = end
        mv.release()
        if src is buf:
            if pos == n:
                buf.clear()
            elif pos:
                del buf[:pos]
        elif pos < n:
            buf += data[pos:]
        if self._out:
            self.flush()

    # -- helpers -----------------------------------------------------------
    def on_frame(self, kind: int, body: memoryview) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        out = self._out
        self._out = []
        assert self.transport is not None
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    async def drain(self) -> None:
        if self._paused:
            if self._drain_waiter is None:
                self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter


# ---------------------------------------------------------------------------
# server


class ServerState:
    def __init__(self) -> None:
        self.count = 0
        self.topics: dict[str, set[FloorServerProtocol]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def publish_many(self, topic: str, n: int) -> None:
        subs = list(self.topics.get(topic, ()))
        sent = 0
        while sent < n:
            k = min(PUBLISH_BATCH, n - sent)
            # each publish encodes its message once; the same bytes go to every subscriber
            chunk = b"".join([frame(PUB, dumps({"pub": topic, "message": PAYLOAD})) for _ in range(k)])
            for sub in subs:
                if sub.transport is not None and not sub.transport.is_closing():
                    sub.transport.write(chunk)
            sent += k
            for sub in subs:
                if sub._paused:
                    await sub.drain()
            await asyncio.sleep(0)


class FloorServerProtocol(FrameProtocol):
    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for subs in self.state.topics.values():
            subs.discard(self)

    def on_frame(self, kind: int, body: memoryview) -> None:
        if kind == REQ:
            self._out.append(frame(RESP, dumps(loads(body))))
        elif kind == MSG:
            loads(body)
            self.state.count += 1
        elif kind == RAW:
            self._out.append(HDR.pack(len(body) + 1, RAWRESP) + body)
        elif kind == COUNT:
            self._out.append(frame(RESP, dumps(self.state.count)))
            self.state.count = 0
        elif kind == SUB:
            self.state.topics.setdefault(bytes(body).decode(), set()).add(self)
            self._out.append(frame(RESP, b"true"))
        elif kind == START:
            args = loads(body)
            self._out.append(frame(RESP, b"true"))
            task = asyncio.get_running_loop().create_task(
                self.state.publish_many(args["topic"], args["n"])
            )
            self.state.tasks.add(task)
            task.add_done_callback(self.state.tasks.discard)
        else:
            raise ValueError(f"unknown frame kind {kind}")


def serve(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    ready: Callable[[], None],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = ServerState()
        server = await loop.create_unix_server(
            lambda: FloorServerProtocol(state), sock_path(sockdir), backlog=256
        )
        async with server:
            ready()
            await asyncio.Future()

    run_loop(main, bool(options.get("uvloop")))


# ---------------------------------------------------------------------------
# client


class FloorClientProtocol(FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.resp_hook: Callable[[memoryview], None] | None = None
        self.topic_handlers: dict[str, Callable[[Any], None]] = {}

    def on_frame(self, kind: int, body: memoryview) -> None:
        if kind == RESP:
            hook = self.resp_hook
            if hook is not None:
                hook(body)
            else:
                self.waiters.popleft().set_result(loads(body))
        elif kind == PUB:
            msg = loads(body)
            handler = self.topic_handlers.get(msg["pub"])
            if handler is not None:
                handler(msg["message"])
        elif kind == RAWRESP:
            self.waiters.popleft().set_result(bytes(body))
        else:
            raise ValueError(f"unknown frame kind {kind}")

    def request(self, kind: int, body: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        assert self.transport is not None
        if len(body) > 65536:
            self.transport.writelines([HDR.pack(len(body) + 1, kind), body])
        else:
            self.transport.write(frame(kind, body))
        return fut


async def _connect(path: str) -> FloorClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(FloorClientProtocol, path)
    return proto


async def _seq(proto: FloorClientProtocol, n: int) -> list[int]:
    import time

    clock = time.perf_counter_ns
    lat: list[int] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    t0 = 0
    out = proto._out

    def on_resp(body: memoryview) -> None:
        nonlocal t0
        loads(body)
        lat.append(clock() - t0)
        if len(lat) < n:
            t0 = clock()
            out.append(frame(REQ, dumps(PAYLOAD)))
        else:
            done.set_result(None)

    proto.resp_hook = on_resp
    t0 = clock()
    assert proto.transport is not None
    proto.transport.write(frame(REQ, dumps(PAYLOAD)))
    await done
    proto.resp_hook = None
    return lat


async def _pipelined(proto: FloorClientProtocol, total: int, window: int) -> float:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sent = min(window, total)
    received = 0
    out = proto._out

    def on_resp(body: memoryview) -> None:
        nonlocal sent, received
        loads(body)
        received += 1
        if sent < total:
            out.append(frame(REQ, dumps(PAYLOAD)))
            sent += 1
        elif received == total:
            done.set_result(None)

    proto.resp_hook = on_resp
    t0 = now()
    assert proto.transport is not None
    proto.transport.write(b"".join([frame(REQ, dumps(PAYLOAD)) for _ in range(sent)]))
    await done
    elapsed = now() - t0
    proto.resp_hook = None
    return elapsed


async def _oneway(proto: FloorClientProtocol, n: int) -> float:
    assert proto.transport is not None
    write = proto.transport.write
    t0 = now()
    left = n
    while left:
        k = min(256, left)
        write(b"".join([frame(MSG, dumps(PAYLOAD)) for _ in range(k)]))
        left -= k
        if proto._paused:
            await proto.drain()
    count = await proto.request(COUNT, b"")
    elapsed = now() - t0
    if count != n:
        raise RuntimeError(f"server counted {count} of {n} messages")
    return elapsed


async def _fanout(protos: list[FloorClientProtocol], n: int) -> float:
    total = n * len(protos)
    got = 0
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(message: Any) -> None:
        nonlocal got
        got += 1
        if got == total:
            done.set_result(None)

    for proto in protos:
        proto.topic_handlers[TOPIC] = on_message
    t0 = now()
    await protos[0].request(START, dumps({"topic": TOPIC, "n": n}))
    await done
    return now() - t0


def client(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    server_pid: int,
) -> Result:
    path = sock_path(sockdir)

    async def main() -> Result:
        if workload == "seq_rtt":
            proto = await _connect(path)
            await _seq(proto, params.seq_warmup)
            return seq_result(await _seq(proto, params.seq_n))
        if workload == "pipelined":
            proto = await _connect(path)
            await _pipelined(proto, params.pipe_warmup, params.pipe_window)
            elapsed = await _pipelined(proto, params.pipe_total, params.pipe_window)
            return rate_result(params.pipe_total, elapsed)
        if workload == "oneway":
            proto = await _connect(path)
            await _oneway(proto, params.oneway_warmup)
            return rate_result(params.oneway_n, await _oneway(proto, params.oneway_n))
        if workload == "fanout":
            protos = [await _connect(path) for _ in range(params.fanout_subs)]
            for proto in protos:
                if await proto.request(SUB, TOPIC.encode()) is not True:
                    raise RuntimeError("subscribe failed")
            await _fanout(protos, max(10, params.fanout_n // 50))
            elapsed = await _fanout(protos, params.fanout_n)
            return rate_result(params.fanout_n * params.fanout_subs, elapsed)
        if workload == "big":
            proto = await _connect(path)
            data = big_payload(params.big_size)
            await proto.request(RAW, data)
            t0 = now()
            for _ in range(params.big_n):
                reply = await proto.request(RAW, data)
                if len(reply) != len(data):
                    raise RuntimeError("short echo")
            return big_result(params, now() - t0, params.big_n)
        if workload == "connections":
            return await _connections(path, params, server_pid)
        raise ValueError(f"unknown workload {workload}")

    return run_loop(main, bool(options.get("uvloop")))


async def _connections(path: str, params: Params, server_pid: int) -> Result:
    async def one() -> FloorClientProtocol:
        proto = await _connect(path)
        await proto.request(REQ, dumps(PAYLOAD))
        return proto

    keep = [await one()]
    await asyncio.sleep(SETTLE_S)
    before = vm_rss_kib(server_pid)
    left = params.conn_n
    while left:
        k = min(params.conn_batch, left)
        keep += await asyncio.gather(*(one() for _ in range(k)))
        left -= k
    await asyncio.sleep(SETTLE_S)
    after = vm_rss_kib(server_pid)
    return conn_result(params.conn_n, before, after)
