"""``ipc-server bench``: this library alone, on the workloads of the benchmark suite.

Starts ``ipc-server serve`` in a subprocess on a temporary socket and runs
seq_rtt, pipelined, oneway, fanout and big against it through the public
client API. The comparison with other libraries lives in ``benchmarks/`` of
the source tree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .. import __version__
from ..client import IPCClient
from .output import EXIT_OK, EXIT_TIMEOUT, CommandError, Output, isatty
from .session import shut

__all__ = ("BENCH_PAYLOAD", "BENCH_WORKLOADS", "BenchSizes", "cmd_bench", "workload_list")


# The ~200-byte JSON-like dict of the benchmark suite (benchmarks/config.py).
BENCH_PAYLOAD: dict[str, Any] = {
    "id": 123456,
    "method": "user.update",
    "params": {
        "user_id": 987654321,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "roles": ["admin", "editor"],
        "active": True,
    },
    "meta": {"trace": "4bf92f3577b34da6", "ts": 1732540800.123},
}
BENCH_TOPIC = "bench.fanout"
BENCH_WORKLOADS = ("seq_rtt", "pipelined", "oneway", "fanout", "big")


@dataclass(frozen=True)
class BenchSizes:
    """How much each workload does."""

    seq_n: int = 5_000
    pipe_total: int = 50_000
    pipe_window: int = 100
    oneway_n: int = 200_000
    fanout_subs: int = 10
    fanout_n: int = 5_000
    big_size: int = 16 * 1024 * 1024
    big_n: int = 5
    workload_timeout: float = 60.0


BENCH_FULL = BenchSizes()
BENCH_QUICK = BenchSizes(
    seq_n=100,
    pipe_total=500,
    pipe_window=50,
    oneway_n=1_000,
    fanout_subs=3,
    fanout_n=100,
    big_size=256 * 1024,
    big_n=2,
    workload_timeout=20.0,
)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = isatty(self.stream)
        self.label = ""
        self.total = 1
        self._last = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self._last = label, max(1, total), 0.0
        self.update(0)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < 0.05:
            return
        self._last = now
        frac = min(1.0, done / self.total)
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label:<10} [{bar}] {frac * 100:3.0f}%")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (self.WIDTH + 20) + "\r")
            self.stream.flush()


async def _bench_server(path: str, codec: str) -> asyncio.subprocess.Process:
    """``ipc-server serve --quiet`` in a subprocess; returns once it said ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ipc_server",
        "serve",
        "--path",
        path,
        "--quiet",
        "--format",
        "json",
        "--codec",
        codec,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15.0)
    except (asyncio.TimeoutError, TimeoutError):
        await _stop_process(proc)
        raise CommandError("the bench server did not start within 15 s", EXIT_TIMEOUT) from None
    try:
        ready = json.loads(line).get("event") == "ready"
    except ValueError:
        ready = False
    if not ready:
        await _stop_process(proc)
        err = (await proc.stderr.read()).decode(errors="replace").strip()
        raise CommandError(f"the bench server did not start: {err or line!r}")
    return proc


async def _drain(stream: asyncio.StreamReader | None) -> None:
    """Read a child's pipe to the end so that it never blocks on a full pipe."""
    if stream is not None:
        while await stream.read(65536):
            pass


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # SIGTERM: serve closes gracefully
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except (asyncio.TimeoutError, TimeoutError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


async def _bench_seq_rtt(client: IPCClient, sizes: BenchSizes, bar: Progress) -> dict[str, Any]:
    for _ in range(max(1, sizes.seq_n // 10)):  # warm-up
        await client.request(BENCH_PAYLOAD)
    samples: list[float] = []
    bar.start("seq_rtt", sizes.seq_n)
    for i in range(sizes.seq_n):
        t0 = time.perf_counter()
        await client.request(BENCH_PAYLOAD)
        samples.append(time.perf_counter() - t0)
        bar.update(i + 1)
    samples.sort()
    p50 = samples[len(samples) // 2] * 1e6
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6
    return {
        "value": p50,
        "unit": "µs",
        "metric": "median round trip",
        "p50_us": round(p50, 1),
        "p99_us": round(p99, 1),
        "n": sizes.seq_n,
        "detail": f"p99 {p99:.1f} µs over {sizes.seq_n} sequential requests",
    }


async def _bench_pipelined(client: IPCClient, sizes: BenchSizes, bar: Progress) -> dict[str, Any]:
    total, window = sizes.pipe_total, sizes.pipe_window
    done = 0
    bar.start("pipelined", total)

    async def worker(n: int) -> None:
        nonlocal done
        for _ in range(n):
            await client.request(BENCH_PAYLOAD)
            done += 1
            bar.update(done)

    shares = [total // window + (1 if i < total % window else 0) for i in range(window)]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in shares))
    rate = _rate(total, time.perf_counter() - t0)
    return {
        "value": rate,
        "unit": "req/s",
        "metric": "requests",
        "rate": round(rate),
        "n": total,
        "detail": f"{total} requests, {window} in flight",
    }


async def _bench_oneway(client: IPCClient, sizes: BenchSizes, bar: Progress) -> dict[str, Any]:
    n = sizes.oneway_n
    bar.start("oneway", n)
    t0 = time.perf_counter()
    for i in range(n):
        await client.send(BENCH_PAYLOAD)
        if i % 256 == 0:
            bar.update(i)
    # Requests are answered in order after the messages before them: a barrier.
    await client.request(None)
    bar.update(n)
    rate = _rate(n, time.perf_counter() - t0)
    return {
        "value": rate,
        "unit": "msg/s",
        "metric": "one-way messages",
        "rate": round(rate),
        "n": n,
        "detail": f"{n} messages, then one request as a barrier",
    }


async def _bench_fanout(
    client: IPCClient, sizes: BenchSizes, bar: Progress, make: Callable[[], IPCClient]
) -> dict[str, Any]:
    subs_n, n = sizes.fanout_subs, sizes.fanout_n
    total = subs_n * n
    loop = asyncio.get_running_loop()
    all_in: asyncio.Future[None] = loop.create_future()
    received = 0

    def got(_message: Any) -> None:
        nonlocal received
        received += 1
        bar.update(received)
        if received >= total and not all_in.done():
            all_in.set_result(None)

    subscribers = [make() for _ in range(subs_n)]
    try:
        for sub in subscribers:
            sub.on(BENCH_TOPIC, got)
            await sub.connect()
            await sub.subscribe(BENCH_TOPIC)
        bar.start("fanout", total)
        t0 = time.perf_counter()

        async def publisher(count: int) -> None:
            for _ in range(count):
                await client.publish(BENCH_TOPIC, BENCH_PAYLOAD)

        window = 16
        await asyncio.gather(
            *(publisher(n // window + (1 if i < n % window else 0)) for i in range(window))
        )
        await all_in
        rate = _rate(total, time.perf_counter() - t0)
    finally:
        for sub in subscribers:
            await shut(sub)
    return {
        "value": rate,
        "unit": "deliveries/s",
        "metric": "deliveries",
        "rate": round(rate),
        "n": n,
        "detail": f"{n} publishes to {subs_n} subscribers",
    }


async def _bench_big(client: IPCClient, sizes: BenchSizes, bar: Progress) -> dict[str, Any]:
    payload = "x" * sizes.big_size
    bar.start("big", sizes.big_n)
    t0 = time.perf_counter()
    for i in range(sizes.big_n):
        reply = await client.request(payload, timeout=30.0)
        if len(reply) != sizes.big_size:
            raise CommandError("big: the echo came back with another size")
        bar.update(i + 1)
    mbps = _rate(sizes.big_size * sizes.big_n / 1e6, time.perf_counter() - t0)
    mib = sizes.big_size / (1024 * 1024)
    return {
        "value": mbps,
        "unit": "MB/s",
        "metric": "payload echoed",
        "mb_per_s": round(mbps, 1),
        "n": sizes.big_n,
        "detail": f"{sizes.big_n} round trips of {mib:g} MiB",
    }


async def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    """``ipc-server bench``: start the server, run the chosen workloads, report each result."""
    sizes = BENCH_QUICK if args.quick else BENCH_FULL
    workloads = args.workloads or list(BENCH_WORKLOADS)
    folder = tempfile.mkdtemp(prefix="ipc") if os.name != "nt" else None
    path = os.path.join(folder, "bench.sock") if folder else f"ipc-bench-{os.getpid()}"
    bar = Progress()

    def make() -> IPCClient:
        return IPCClient(path=path, codec=args.codec, reconnect=False, request_timeout=30.0)

    results: list[tuple[str, dict[str, Any]]] = []
    client = make()
    proc: asyncio.subprocess.Process | None = None
    drains: list[asyncio.Future[None]] = []
    try:
        proc = await _bench_server(path, args.server_codec)
        drains = [
            asyncio.ensure_future(_drain(proc.stdout)),
            asyncio.ensure_future(_drain(proc.stderr)),
        ]
        await client.connect({"bench": True})
        for name in workloads:
            run: Awaitable[dict[str, Any]]
            if name == "fanout":
                run = _bench_fanout(client, sizes, bar, make)
            else:
                run = _BENCHES[name](client, sizes, bar)
            try:
                result = await asyncio.wait_for(run, sizes.workload_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                raise CommandError(
                    f"{name}: not done within {sizes.workload_timeout:g} s", EXIT_TIMEOUT
                ) from None
            finally:
                bar.finish()
            results.append((name, result))
            if out.json:
                fields = {k: v for k, v in result.items() if k not in ("value", "detail")}
                out.emit("result", "", workload=name, **fields)
    finally:
        await shut(client)
        if proc is not None:
            await _stop_process(proc)
        for task in drains:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2.0)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    if not out.json:
        _bench_table(results, args, out)
    return EXIT_OK


_BENCHES: dict[str, Callable[[IPCClient, BenchSizes, Progress], Awaitable[dict[str, Any]]]] = {
    "seq_rtt": _bench_seq_rtt,
    "pipelined": _bench_pipelined,
    "oneway": _bench_oneway,
    "big": _bench_big,
}


def _bench_table(
    results: list[tuple[str, dict[str, Any]]], args: argparse.Namespace, out: Output
) -> None:
    rows = [("workload", "result", "", "what")]
    for name, r in results:
        value = r["value"]
        shown = f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
        rows.append((name, shown, r["unit"], r["detail"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    mode = "quick" if args.quick else "short"
    out.stream.write(
        f"ipc_server {__version__} {mode} bench, client codec {args.codec}, "
        f"server in a subprocess on a local socket\n\n"
    )
    for i, row in enumerate(rows):
        out.stream.write(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}} {row[2]:<{widths[2]}}  {row[3]}\n"
        )
        if i == 0:
            out.stream.write("-" * (sum(widths) + 4 + max(len(r[3]) for r in rows)) + "\n")
    out.stream.write("\nFor the full comparison against other libraries: python -m benchmarks\n")
    out.stream.flush()


def workload_list(text: str) -> list[str]:
    """The ``--workloads`` argument: names from ``BENCH_WORKLOADS``, separated by commas."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in BENCH_WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(BENCH_WORKLOADS)}"
        )
    return names
