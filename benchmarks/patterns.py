"""The messaging patterns against the plain operations they replace, in one run.

    python -m benchmarks.patterns            # 3 runs per figure (about a minute)
    python -m benchmarks.patterns --quick    # tiny sizes: a smoke test

The server runs in a process of its own (uvloop, ``async def`` handlers, as
users write them); a worker serving ``echo`` runs in another; the callers,
publishers and subscribers run here, on uvloop. Figures are medians of
``--runs`` runs; ratios are printed beside the figure they compare with.

- publish: a publisher ``gather``s batches of ``publish()`` to one topic that
  one subscriber receives; the server also holds 9 other subscriptions, then
  10,000 exact and 1,000 wildcard ones (none matching). Also the server's
  matching alone (``TopicRegistry.subscribers``), timed in this process.
- call vs request: one call in flight (round-trip p50/p99) and ``gather``
  batches of 1,000, ``client.call("echo", x)`` through the server to the
  worker against ``client.request(x)`` answered by the server.
- stream: ``async for`` over ``client.stream()`` of small items (the
  benchmarks' ~200-byte dict) and of 16 KiB strings, windows 64 and 1,024,
  against a loop of ``request()`` fetching one item each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks.config import PAYLOAD
from benchmarks.procs import child_env

BIG = "x" * 16384


# ------------------------------------------------------------------ the server and worker processes


async def _serve(path: str) -> None:
    from ipc_server import IPCServer

    server = IPCServer(path=path, max_topics_per_connection=None)

    async def on_request(request: Any, respond: Any, connection: Any) -> None:
        if request.__class__ is dict and "items" in request:
            item = BIG if request.get("big") else PAYLOAD
            await respond.stream(item for _ in range(request["items"]))
        else:
            await respond(request)

    server.on("request", on_request)
    await server.start()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the runner ends
    await server.close()


async def _work(path: str) -> None:
    from ipc_server import IPCClient

    client = IPCClient(path=path)
    await client.connect()

    async def echo(request: Any, respond: Any) -> None:
        await respond(request)

    await client.serve("echo", echo)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await client.close()


def _child(role: str, path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.patterns", f"--{role}", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        proc.kill()
        raise RuntimeError(f"the {role} process did not start")
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------ measurements


async def _publish_rate(path: str, others: list[str], messages: int) -> float:
    """Publishes per second to the topic one subscriber receives, with ``others`` subscribed too."""
    from ipc_server import IPCClient

    holders = []
    for start in range(0, len(others), 5000):  # a few connections hold the other subscriptions
        holder = IPCClient(path=path)
        await holder.connect()
        await holder.subscribe(others[start : start + 5000])
        holders.append(holder)
    receiver = IPCClient(path=path)
    publisher = IPCClient(path=path)
    await receiver.connect()
    await publisher.connect()
    done = asyncio.Event()
    got = 0

    def count(message: Any) -> None:
        nonlocal got
        got += 1
        if got == messages:
            done.set()

    receiver.on("orders.eu.new", count)
    await receiver.subscribe("orders.eu.new")
    started = time.perf_counter()
    for _ in range(0, messages, 1000):
        await asyncio.gather(*(publisher.publish("orders.eu.new", PAYLOAD) for _ in range(1000)))
    await asyncio.wait_for(done.wait(), 60)
    rate = messages / (time.perf_counter() - started)
    for client in (receiver, publisher, *holders):
        await client.close()
    return rate


def _others(exact: int, wild: int) -> list[str]:
    names = [f"other.{i}.new" for i in range(exact)]
    shapes = ("w{}.*", "w{}.>", "*.x{}", "orders.x{}.*")
    names += [shapes[i % 4].format(i) for i in range(wild)]
    return names


def _match_cost(exact: int, wild: int, repeat: int) -> float:
    """Nanoseconds per ``TopicRegistry.subscribers`` of the published topic."""
    from ipc_server.topics import TopicRegistry

    registry: TopicRegistry[object] = TopicRegistry(None, None)
    names = _others(exact, wild)
    registry.subscribe(object(), ["orders.eu.new"])
    for start in range(0, len(names), 1000):
        registry.subscribe(object(), names[start : start + 1000])
    match = registry.subscribers
    started = time.perf_counter()
    for _ in range(repeat):
        match("orders.eu.new")
    return (time.perf_counter() - started) / repeat * 1e9


async def _round_trips(ask: Callable[[Any], Coroutine[Any, Any, Any]], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await ask(PAYLOAD)
        times.append(time.perf_counter() - started)
    return times


async def _gather_rate(ask: Callable[[Any], Coroutine[Any, Any, Any]], total: int) -> float:
    started = time.perf_counter()
    for _ in range(0, total, 1000):
        await asyncio.gather(*(ask(PAYLOAD) for _ in range(1000)))
    return total / (time.perf_counter() - started)


async def _calls(path: str, sizes: dict[str, int]) -> dict[str, float]:
    from ipc_server import IPCClient

    client = IPCClient(path=path)
    await client.connect()

    async def call(x: Any) -> Any:
        return await client.call("echo", x)

    out: dict[str, float] = {}
    for name, ask in (("request", client.request), ("call", call)):
        await _round_trips(ask, 200)  # warm up
        times = sorted(await _round_trips(ask, sizes["rtt"]))
        out[f"{name}_p50_us"] = times[len(times) // 2] * 1e6
        out[f"{name}_p99_us"] = times[int(len(times) * 0.99)] * 1e6
        out[f"{name}_gather_per_s"] = await _gather_rate(ask, sizes["gather"])
    await client.close()
    return out


async def _streams(path: str, sizes: dict[str, int]) -> dict[str, float]:
    from ipc_server import IPCClient

    client = IPCClient(path=path)
    await client.connect()
    out: dict[str, float] = {}
    for big, items, unit in (
        (False, sizes["items"], len(json.dumps(PAYLOAD))),
        (True, sizes["big"], len(BIG)),
    ):
        label = "big" if big else "small"
        for window in (64, 1024):
            started = time.perf_counter()
            got = 0
            async for _ in client.stream({"items": items, "big": big}, window=window):
                got += 1
            seconds = time.perf_counter() - started
            assert got == items
            out[f"stream_{label}_w{window}_items_per_s"] = items / seconds
            out[f"stream_{label}_w{window}_mb_per_s"] = items * unit / seconds / 1e6
        loop_items = max(1, items // 10)
        request = {"items": 1, "big": big}
        started = time.perf_counter()
        for _ in range(loop_items):
            await client.request(request)
        seconds = time.perf_counter() - started
        out[f"requests_{label}_items_per_s"] = loop_items / seconds
        out[f"requests_{label}_mb_per_s"] = loop_items * unit / seconds / 1e6
    await client.close()
    return out


async def _one_run(path: str, sizes: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    out["publish_10_per_s"] = await _publish_rate(path, _others(9, 0), sizes["publish"])
    out["publish_11000_per_s"] = await _publish_rate(path, _others(10_000, 1_000), sizes["publish"])
    out.update(await _calls(path, sizes))
    out.update(await _streams(path, sizes))
    return out


def _table(runs: list[dict[str, float]], match: dict[str, float]) -> str:
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    rows = [
        ("publish, 10 subscriptions", f"{med['publish_10_per_s']:,.0f} /s", ""),
        (
            "publish, 10,000 exact + 1,000 wildcard",
            f"{med['publish_11000_per_s']:,.0f} /s",
            f"{med['publish_10_per_s'] / med['publish_11000_per_s']:.2f}x the cost",
        ),
        ("matching alone, 10 exact", f"{match['10']:,.0f} ns", ""),
        ("matching alone, 6 exact + 4 wildcard", f"{match['10w']:,.0f} ns", ""),
        (
            "matching alone, 10,000 exact + 1,000 wildcard",
            f"{match['11000']:,.0f} ns",
            f"{match['11000'] / match['10w']:.2f}x 6 + 4, {match['11000'] / match['10']:.2f}x 10 exact",
        ),
    ]
    for name in ("request", "call"):
        rows.append(
            (
                f"{name}() round trip p50 / p99",
                f"{med[f'{name}_p50_us']:.0f} / {med[f'{name}_p99_us']:.0f} us",
                ""
                if name == "request"
                else f"{med['call_p50_us'] / med['request_p50_us']:.2f}x request()",
            )
        )
        rows.append(
            (
                f"{name}(), gather of 1,000",
                f"{med[f'{name}_gather_per_s']:,.0f} /s",
                ""
                if name == "request"
                else f"{med['call_gather_per_s'] / med['request_gather_per_s']:.2f}x request()",
            )
        )
    for label, what in (("small", "~200 B items"), ("big", "16 KiB items")):
        base = med[f"requests_{label}_items_per_s"]
        rows.append(
            (
                f"loop of request(), {what}",
                f"{base:,.0f} items/s, {med[f'requests_{label}_mb_per_s']:.1f} MB/s",
                "",
            )
        )
        for window in (64, 1024):
            rate = med[f"stream_{label}_w{window}_items_per_s"]
            rows.append(
                (
                    f"stream(), {what}, window {window}",
                    f"{rate:,.0f} items/s, {med[f'stream_{label}_w{window}_mb_per_s']:.1f} MB/s",
                    f"{rate / base:.1f}x the loop",
                )
            )
    width = max(len(r[0]) for r in rows)
    middle = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>{middle}}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.patterns", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import uvloop

    if args.serve:
        uvloop.run(_serve(args.serve))
        return 0
    if args.worker:
        uvloop.run(_work(args.worker))
        return 0
    sizes = (
        {"publish": 2000, "rtt": 200, "gather": 2000, "items": 2000, "big": 200}
        if args.quick
        else {"publish": 50_000, "rtt": 5000, "gather": 50_000, "items": 200_000, "big": 20_000}
    )
    runs = 1 if args.quick else args.runs
    folder = tempfile.mkdtemp(prefix="ipcp", dir="/tmp")
    path = os.path.join(folder, "s.sock")
    server = _child("serve", path)
    worker = None
    try:
        worker = _child("worker", path)
        results = [uvloop.run(_one_run(path, sizes)) for _ in range(runs)]
    finally:
        if worker is not None:
            _end(worker)
        _end(server)
        shutil.rmtree(folder, ignore_errors=True)
    repeat = 2000 if args.quick else 200_000
    match = {
        "10": _match_cost(9, 0, repeat),
        "10w": _match_cost(5, 4, repeat),
        "11000": _match_cost(10_000, 1_000, repeat),
    }
    print(
        f"patterns, {runs} run(s), medians; Python {sys.version.split()[0]}, uvloop, {os.cpu_count()} cores"
    )
    print(_table(results, match))
    return 0


if __name__ == "__main__":
    sys.exit(main())
