"""multiprocessing.connection: Listener/Client, family AF_UNIX, send_bytes/recv_bytes.

Bodies are orjson (no pickling), so the codec matches the other Python systems.
No publish/subscribe and no multiplexing server: fanout and connections are n/a.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import orjson

from benchmarks.config import PAYLOAD, Params
from benchmarks.impl.common import (
    Result,
    big_more,
    big_payload,
    big_result,
    check_count,
    now,
    rate_result,
    seq_result,
    sock_path,
)

dumps = orjson.dumps
loads = orjson.loads

COUNT = b"?"  # oneway: "how many since the last time?" (not valid JSON, so unambiguous)


def serve(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    ready: Callable[[], None],
) -> None:
    listener = Listener(sock_path(sockdir), family="AF_UNIX")
    ready()
    conn = listener.accept()
    recv, send = conn.recv_bytes, conn.send_bytes
    try:
        if workload in ("seq_rtt", "pipelined"):
            while True:
                send(dumps(loads(recv())))
        elif workload == "big":
            while True:
                send(recv())
        elif workload == "oneway":
            count = 0
            while True:
                body = recv()
                if body == COUNT:
                    send(str(count).encode())
                    count = 0
                else:
                    loads(body)
                    count += 1
        else:
            raise ValueError(f"no {workload} for multiprocessing.connection")
    except EOFError:  # the client is done
        return


def _seq(conn: Connection, n: int) -> list[int]:
    clock = time.perf_counter_ns
    send, recv = conn.send_bytes, conn.recv_bytes
    lat: list[int] = []
    for _ in range(n):
        t0 = clock()
        send(dumps(PAYLOAD))
        loads(recv())
        lat.append(clock() - t0)
    return lat


def _pipelined(conn: Connection, total: int, window: int) -> float:
    # One thread cannot keep `window` requests in flight over blocking sockets: with
    # both socket buffers full, client and server would block in send() forever.
    # So the main thread sends, a second thread receives, a semaphore keeps the window.
    slots = threading.Semaphore(window)
    failure: list[BaseException] = []

    def receive() -> None:
        recv, release = conn.recv_bytes, slots.release
        try:
            for _ in range(total):
                loads(recv())
                release()
        except BaseException as exc:  # pragma: no cover - reported below
            failure.append(exc)
            release(window)

    reader = threading.Thread(target=receive, daemon=True)
    send, acquire = conn.send_bytes, slots.acquire
    t0 = now()
    reader.start()
    for _ in range(total):
        acquire()
        if failure:
            break
        send(dumps(PAYLOAD))
    reader.join()
    if failure:
        raise failure[0]
    return now() - t0


def _oneway(conn: Connection, n: int) -> float:
    send = conn.send_bytes
    t0 = now()
    for _ in range(n):
        send(dumps(PAYLOAD))
    send(COUNT)
    count = int(conn.recv_bytes())
    elapsed = now() - t0
    check_count(count, n)
    return elapsed


def client(
    workload: str,
    sockdir: str,
    params: Params,
    options: dict[str, Any],
    server_pid: int,
) -> Result:
    conn = Client(sock_path(sockdir), family="AF_UNIX")
    if workload == "seq_rtt":
        _seq(conn, params.seq_warmup)
        return seq_result(_seq(conn, params.seq_n))
    if workload == "pipelined":
        _pipelined(conn, params.pipe_warmup, params.pipe_window)
        return rate_result(
            params.pipe_total, _pipelined(conn, params.pipe_total, params.pipe_window)
        )
    if workload == "oneway":
        _oneway(conn, params.oneway_warmup)
        return rate_result(params.oneway_n, _oneway(conn, params.oneway_n))
    if workload == "big":
        data = big_payload(params.big_size)
        conn.send_bytes(data)
        conn.recv_bytes()
        t0, done = now(), 0
        while big_more(params, done, t0):
            conn.send_bytes(data)
            if len(conn.recv_bytes()) != len(data):
                raise RuntimeError("short echo")
            done += 1
        return big_result(params, now() - t0, done)
    raise ValueError(f"no {workload} for multiprocessing.connection")
