"""The floor: a bare asyncio.Protocol with a 4-byte length prefix and orjson bodies.

This is what a pure-Python asyncio design cannot beat by much, written as
tightly as we can: the loop reads into our buffer (BufferedProtocol), every
complete frame of one read is decoded in place (buffer + offset, no copy per
frame), the replies it produces go out in one write, and writers respect
``pause_writing``.

A frame is ``>I`` length (of what follows), one kind byte, then the body.
Both ends do the work a real messaging layer must: the server decodes every
request and encodes every reply; the client encodes every request and decodes
every reply.  Replies come back in order on a connection, so no nonces.

The client has the shape any request/response API has, and so the same shape
as the library measured against it: ``await request(obj)`` resolves one
future per request, and ``send(obj)`` is one call per message that waits only
when the transport is over its high-water mark. Writes are coalesced the same
way: the first write after data came in goes out at once, further writes of
the same loop iteration leave together.  Since ``request`` returns a future,
``asyncio.gather`` of 1,000 of them (the gather_* workloads) makes no Task per
request; the server has no handler layer, so it answers both gather workloads
the same way.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

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

RECV_SIZE = 256 * 1024  # receive buffer; grows to fit a longer frame
MIN_FREE = 64 * 1024  # free room offered to each read
PUBLISH_BATCH = 64
FLUSH_COUNT = 1024  # gathered writes that go out at once, before the iteration ends  # publishes framed per loop iteration before writing to subscribers

dumps = orjson.dumps
loads = orjson.loads


def frame(kind: int, body: bytes) -> bytes:
    return HDR.pack(len(body) + 1, kind) + body


# One receive buffer for every connection of the process: the loop reads one
# stream at a time and we parse each read before returning, so only a partial
# frame left at the end of a read needs a buffer of its own.  Idle connections
# hold no receive buffer at all.
_SCRATCH = bytearray(RECV_SIZE)
_SCRATCH_VIEW = memoryview(_SCRATCH)


class FrameProtocol(asyncio.BufferedProtocol):
    """Length-prefixed frames in, coalesced frames out, with write backpressure.

    The loop reads straight into our buffer (BufferedProtocol: no bytes object
    per read, no accumulator).  Frames are parsed in place.  A frame cut by the
    end of a read moves to this connection's own buffer, sized for the whole
    frame once its header is known, so even a 16 MiB frame arrives contiguous.
    A buffer is never resized while a view of it may be held: only replaced, or
    compacted with a same-size slice assignment.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._own: bytearray | None = None  # while a frame is partial: _own[_start:_end]
        self._spare: bytearray | None = None  # a long frame's buffer, kept for the next one
        self._start = 0
        self._end = 0
        self._want = 0  # bytes from _start that complete the frame in progress (0: unknown)
        self._out: list[bytes] = []
        self._burst = False  # a write went out since data last came in
        self._flush_handle: asyncio.Handle | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

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

    def get_buffer(self, sizehint: int) -> memoryview:
        own = self._own
        if own is None:
            return _SCRATCH_VIEW
        if len(own) - self._end < MIN_FREE or self._start + self._want > len(own):
            used = self._end - self._start
            if max(self._want, used) + MIN_FREE <= len(own):
                own[:used] = own[self._start : self._end]  # same size: no resize
            else:
                new = self._buffer(max(self._want, used) + MIN_FREE)
                new[:used] = own[self._start : self._end]
                self._own = own = new
            self._start, self._end = 0, used
        return memoryview(own)[self._end :]

    def _buffer(self, size: int) -> bytearray:
        spare = self._spare
        if spare is not None and len(spare) >= size:
            self._spare = None
            return spare
        return bytearray(size)

    def buffer_updated(self, nbytes: int) -> None:
        self._burst = False
        own = self._own
        buf: bytearray
        if own is None:
            buf, mv, pos, end = _SCRATCH, _SCRATCH_VIEW, 0, nbytes
        else:
            end = self._end = self._end + nbytes
            pos = self._start
            if end - pos < self._want:
                return  # a long frame is still arriving
            buf, mv = own, memoryview(own)
        unpack = LEN.unpack_from
        on_frame = self.on_frame
        while end - pos >= 5:
            (length,) = unpack(buf, pos)
            stop = pos + 4 + length
            if stop > end:
                break
            on_frame(buf[pos + 4], mv[pos + 5 : stop])
            pos = stop
        if pos == end:
            if own is not None:
                if len(own) > RECV_SIZE:
                    self._spare = own
                self._own = None
                self._start = self._end = self._want = 0
        else:
            used = end - pos
            self._want = want = 4 + unpack(buf, pos)[0] if used >= 4 else 0
            if own is None:  # move the partial frame out of the shared buffer
                own = self._own = self._buffer(max(want, used) + MIN_FREE)
                own[:used] = buf[pos:end]
                self._start, self._end = 0, used
            else:
                self._start = pos
        if self._out:
            self.flush()

    # -- helpers -----------------------------------------------------------
    def on_frame(self, kind: int, body: memoryview) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Write now if nothing went out since data last came in, else gather."""
        if self._burst:
            out = self._out
            out.append(data)
            if len(out) >= FLUSH_COUNT:
                self.flush()  # a producer that never yields still reaches the transport
            elif self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)
            return
        assert self.transport is not None
        self.transport.write(data)
        self._burst = True

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if self._out:
            self.flush()

    def flush(self) -> None:
        out = self._out  # the same list object lives on: clients append to it from hooks
        assert self.transport is not None
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)
        out.clear()

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
            chunk = b"".join(
                [frame(PUB, dumps({"pub": topic, "message": PAYLOAD})) for _ in range(k)]
            )
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
            self.write(frame(kind, body))
        return fut

    def send(self, kind: int, body: bytes) -> None:
        self.write(frame(kind, body))


async def _connect(path: str) -> FloorClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(FloorClientProtocol, path)
    return proto


async def _seq(proto: FloorClientProtocol, n: int) -> list[int]:
    import time

    clock = time.perf_counter_ns
    lat: list[int] = []
    request = proto.request
    for _ in range(n):
        t0 = clock()
        await request(REQ, dumps(PAYLOAD))
        lat.append(clock() - t0)
    return lat


async def _pipelined(proto: FloorClientProtocol, total: int, window: int) -> float:
    request = proto.request
    per, extra = divmod(total, window)

    async def worker(k: int) -> None:
        for _ in range(k):
            await request(REQ, dumps(PAYLOAD))

    t0 = now()
    await asyncio.gather(*(worker(per + (1 if i < extra else 0)) for i in range(window)))
    return now() - t0


async def _gather(proto: FloorClientProtocol, total: int, batch: int) -> float:
    # request() returns a future: gather wraps none of them in a Task.
    request = proto.request
    t0 = now()
    left = total
    while left > 0:
        k = min(batch, left)
        await asyncio.gather(*[request(REQ, dumps(PAYLOAD)) for _ in range(k)])
        left -= k
    return now() - t0


async def _oneway(proto: FloorClientProtocol, n: int) -> float:
    send = proto.send
    t0 = now()
    for _ in range(n):
        send(MSG, dumps(PAYLOAD))
        if proto._paused:
            await proto.drain()
    count = await proto.request(COUNT, b"")
    elapsed = now() - t0
    check_count(count, n)
    return elapsed


async def _fanout(protos: list[FloorClientProtocol], n: int) -> float:
    on_message, done = countdown(n * len(protos))
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
        if workload in GATHER:
            proto = await _connect(path)
            await _gather(proto, params.gather_warmup, params.gather_batch)
            elapsed = await _gather(proto, params.gather_total, params.gather_batch)
            return rate_result(params.gather_total, elapsed)
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
            t0, done = now(), 0
            while big_more(params, done, t0):
                reply = await proto.request(RAW, data)
                if len(reply) != len(data):
                    raise RuntimeError("short echo")
                done += 1
            return big_result(params, now() - t0, done)
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
