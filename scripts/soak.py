"""Bounded soak: one server, worker processes full of clients, faults injected at random.

The server runs in this process. Worker processes (this script with
``--worker``) each keep ``--clients`` client lanes busy: requests (answers
checked), pings, numbered one-way messages, subscribe / publish-to-self /
unsubscribe, and clients closed and replaced every few dozen operations.
Meanwhile the main loop injects faults in turn: SIGKILL a worker (and start a
new one), destroy a random connection on the server side, close one with
``allow_reconnect=True``, and attacks on the bounds from raw sockets
(requests pipelined and never read, a packet of empty containers over
``max_packet_objects``, a subscription flood over ``max_topics_per_connection``,
half a packet left to ``read_timeout``) that the honest clients must not feel.

At the end every worker is stopped gracefully and the run checks:

- nothing lost: every numbered message of every client that was never
  disrupted arrived, none twice or out of order, and every answer was right;
- nothing leaked: no connection, topic, task or file descriptor left on the
  server; RSS after the run within ``--rss-growth-mb`` of the warmed-up RSS.

Usage::

    python scripts/soak.py --seconds 60            # the long run
    python scripts/soak.py --seconds 5 --json      # the test-suite run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipc_server import (
    ConnectionClosedError,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCError,
    IPCServer,
    RequestTimeoutError,
)
from ipc_server.codecs import json_dumps
from ipc_server.packets import REQUEST, hello
from ipc_server.protocol import frame

TOPICS = ("t0", "t1", "t2", "t3")
SCRIPT = os.path.abspath(__file__)
STOP_DEADLINE = 30.0


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def settle(predicate: Callable[[], object], timeout: float) -> None:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.01)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------- worker processes


@dataclass
class LaneStats:
    """What the lanes of one worker did."""

    requests: int = 0
    pings: int = 0
    messages: int = 0
    publishes: int = 0
    clients: int = 0
    interrupted: int = 0
    wrong: int = 0
    unexpected: list[str] = field(default_factory=list)


async def lane(
    path: str, index: int, rng: random.Random, stats: LaneStats, stop: asyncio.Event
) -> None:
    """One client after another, each doing random operations, until ``stop``."""
    while not stop.is_set():
        client = IPCClient(path=path, retries=10, max_retry_time=1.0, request_timeout=10.0)
        disrupted = False

        def on_status(status: IPCClientStatus) -> None:
            nonlocal disrupted
            if status in (IPCClientStatus.DISCONNECTED, IPCClientStatus.RECONNECTING):
                disrupted = True

        try:
            await client.connect({"lane": index})
        except (OSError, IPCError, TimeoutError) as exc:
            stats.unexpected.append(f"connect: {exc!r}"[:300])
            continue
        client.on("status", on_status)
        stats.clients += 1
        topic = rng.choice(TOPICS)
        awaited: dict[str, asyncio.Future[None]] = {}

        def on_published(message: Any, awaited: dict[str, asyncio.Future[None]] = awaited) -> None:
            future = awaited.pop(message, None) if isinstance(message, str) else None
            if future is not None and not future.done():
                future.set_result(None)

        client.on(topic, on_published)
        sent = 0
        for step in range(rng.randrange(20, 200)):
            if stop.is_set() or client.status is IPCClientStatus.IDLE:
                break
            op = rng.random()
            try:
                if op < 0.4:
                    payload = {"lane": index, "step": step, "blob": "x" * rng.randrange(0, 2000)}
                    if await client.request(payload) != {"echo": payload}:
                        stats.wrong += 1
                    stats.requests += 1
                elif op < 0.55:
                    await client.ping(step)
                    stats.pings += 1
                elif op < 0.85:
                    await client.send({"seq": sent})
                    sent += 1
                    stats.messages += 1
                elif op < 0.95:
                    token = f"{index}-{step}-{rng.random()}"
                    came_back = awaited[token] = asyncio.get_running_loop().create_future()
                    await client.subscribe(topic)
                    await client.publish(topic, token)
                    try:
                        await asyncio.wait_for(came_back, 5.0)
                    except (asyncio.TimeoutError, TimeoutError):
                        awaited.pop(token, None)
                        if not disrupted:
                            stats.unexpected.append(f"published {token} never came back")
                    await client.unsubscribe(topic)
                    stats.publishes += 1
                else:
                    other = rng.sample(TOPICS, 2)
                    await client.subscribe(other)
                    await client.unsubscribe(other)
            except (ConnectionClosedError, RequestTimeoutError) as exc:
                if disrupted:
                    stats.interrupted += 1
                else:
                    stats.unexpected.append(f"{exc!r}"[:300])
        # The server checks the count on this last message (and forgets the client),
        # so that its bookkeeping does not grow with every client ever seen.
        with contextlib.suppress(IPCError):
            await client.send({"done": sent, "clean": not disrupted})
        await client.close("lane done")


async def worker(path: str, clients: int, seed: int) -> None:
    """Run ``clients`` lanes until stdin closes; print this worker's statistics."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stats = LaneStats()
    rng = random.Random(seed)
    lanes = [
        asyncio.ensure_future(lane(path, i, random.Random(rng.random()), stats, stop))
        for i in range(clients)
    ]
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    print("READY", flush=True)
    await reader.read()
    transport.close()
    stop.set()
    await asyncio.wait_for(asyncio.gather(*lanes), STOP_DEADLINE)
    print(json.dumps(stats.__dict__), flush=True)


# ---------------------------------------------------------------------- the server side


# ---------------------------------------------------------------------- attacks (raw sockets)


def _raw_session(path: str) -> socket.socket:
    """A socket past the CONNECTION exchange, as a peer of this library would be (JSON)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(path)
    sock.sendall(b"IPC" + hello("attacker", None, compress=False, codec="json"))
    sock.recv(65536)  # the answer
    return sock


def _packet(t: int, d: Any, n: str | None = None) -> bytes:
    return frame(json_dumps({"t": t, "d": d} if n is None else {"t": t, "d": d, "n": n}))


def attack_unread(path: str, seed: int) -> None:
    """Requests pipelined for a moment, no answer read, then gone."""
    sock = _raw_session(path)
    sock.setblocking(False)
    chunk = b"".join(_packet(REQUEST, {"flood": i}, f"a{seed}-{i}") for i in range(200))
    with contextlib.suppress(OSError):
        for _ in range(50):
            sock.send(chunk)
    sock.close()


def attack_bomb(path: str, seed: int) -> None:
    """A packet of 60,000 empty containers (over max_packet_objects): the server drops it."""
    sock = _raw_session(path)
    with contextlib.suppress(OSError):
        sock.sendall(frame(b'{"t":1,"d":[' + b"{}," * 59_999 + b"{}]}"))
        while sock.recv(65536):  # until the server's END and close
            pass
    sock.close()


def attack_topics(path: str, seed: int) -> None:
    """A subscription to 2,000 topics (over max_topics_per_connection): answered false."""
    sock = _raw_session(path)
    with contextlib.suppress(OSError):
        sock.sendall(_packet(REQUEST, {"sub": [f"flood{seed}-{i}" for i in range(2000)]}, "s"))
        sock.recv(65536)
    sock.close()


def attack_stall(path: str, seed: int) -> None:
    """Half a packet, then silence until read_timeout drops it."""
    sock = _raw_session(path)
    packet = _packet(REQUEST, "x" * 10_000, "stall")
    with contextlib.suppress(OSError):
        sock.sendall(packet[: len(packet) // 2])
        sock.settimeout(5.0)
        while sock.recv(65536):  # until read_timeout ends it
            pass
    sock.close()


ATTACKS: dict[str, Callable[[str, int], None]] = {
    "attack_unread": attack_unread,
    "attack_bomb": attack_bomb,
    "attack_topics": attack_topics,
    "attack_stall": attack_stall,
}


class Soak:
    """The server, the workers, the faults, and the bookkeeping."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.folder = tempfile.mkdtemp(prefix="ipcsk", dir="/tmp")
        self.path = os.path.join(self.folder, "s")
        self.server = IPCServer(
            path=self.path,
            handshake_timeout=5.0,
            # Small bounds, so that the attacks cross them quickly.
            max_packet_objects=50_000,
            max_topics_per_connection=500,
            read_timeout=1.0,
        )
        self.workers: list[asyncio.subprocess.Process] = []
        self.reports: list[dict[str, Any]] = []
        self.faults: Counter[str] = Counter()
        self.last_seq: dict[str, int] = {}
        self.received: Counter[str] = Counter()
        self.disorder = 0
        self.lost = 0
        self.counts: Counter[str] = Counter()
        self.seen_ids: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.rss: list[tuple[float, float]] = []
        self.worker_seed = args.seed * 1000
        self.closing: set[asyncio.Task[bool]] = set()

    def on_message(self, message: Any, conn: IPCConnection) -> None:
        """Numbered messages: count them per client id; never a repeat or a step back."""
        if isinstance(message, dict) and isinstance(message.get("done"), int):
            # A client's last message: how many it sent; check, then forget the client.
            got = self.received.pop(conn.id, 0)
            self.last_seq.pop(conn.id, None)
            self.seen_ids.discard(conn.id)
            if message.get("clean"):
                self.counts["clean_clients"] += 1
                self.counts["clean_messages"] += message["done"]
                self.lost += max(0, message["done"] - got)
            return
        seq = message.get("seq") if isinstance(message, dict) else None
        if not isinstance(seq, int):
            return
        self.counts["server_messages"] += 1
        if seq <= self.last_seq.get(conn.id, -1):
            self.disorder += 1
        self.last_seq[conn.id] = seq
        self.received[conn.id] += 1

    def on_connect(self, conn: IPCConnection, payload: Any) -> None:
        """Count connects, and returns of a known id (reconnects)."""
        self.counts["connects"] += 1
        if conn.id in self.seen_ids:
            self.counts["reconnects"] += 1
        self.seen_ids.add(conn.id)

    def on_error(self, error: BaseException, conn: IPCConnection | None) -> None:
        """Count server error events by type (and keep one example of each)."""
        name = type(error).__name__
        self.errors[name] += 1
        self.error_samples.setdefault(name, str(error)[:200])

    async def spawn_worker(self) -> None:
        """Start one worker process and wait for it to be ready."""
        self.worker_seed += 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "--worker",
            self.path,
            "--clients",
            str(self.args.clients),
            "--seed",
            str(self.worker_seed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15.0)
        assert line.strip() == b"READY", line
        self.workers.append(proc)
        self.counts["workers"] += 1

    async def inject(self, kind: str) -> None:
        """One fault of ``kind``: kill a worker, drop or close a connection, or an attack."""
        if kind.startswith("attack_"):
            await asyncio.to_thread(ATTACKS[kind], self.path, self.rng.randrange(1 << 30))
            self.faults[kind] += 1
            return
        if kind == "worker_kills":
            victim = self.rng.choice(self.workers)
            self.workers.remove(victim)
            victim.kill()
            await asyncio.wait_for(victim.wait(), 10.0)
            self.faults[kind] += 1
            await self.spawn_worker()
            return
        conns = self.server.connections
        if not conns:
            return
        conn = self.rng.choice(conns)
        if kind == "server_drops":
            conn.destroy("soak: dropped")
        else:
            # Not awaited: a graceful close waits for the client's pending requests.
            task = asyncio.ensure_future(
                conn.close("soak: come back", allow_reconnect=True, timeout=5.0)
            )
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
        self.faults[kind] += 1

    async def run(self) -> dict[str, Any]:
        """The whole soak; returns the summary."""
        server = self.server

        async def echo(request: Any, respond: Any, conn: IPCConnection) -> None:
            self.counts["server_requests"] += 1
            await respond({"echo": request})

        server.on("request", echo)
        server.on("message", self.on_message)
        server.on("connect", self.on_connect)
        server.on("error", self.on_error)
        baseline_tasks = asyncio.all_tasks()
        fds_start = open_fds()
        await server.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(self.args.workers):
            await self.spawn_worker()
        kinds = ["worker_kills", "server_drops", "server_closes", *ATTACKS]
        turn = 0
        while loop.time() - started < self.args.seconds:
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))  # pacing between faults
            kind = kinds[turn] if turn < len(kinds) else self.rng.choice(kinds)
            turn += 1
            await self.inject(kind)
            self.rss.append((loop.time() - started, rss_mb()))
        # Stop: every worker closes its clients gracefully and reports.
        for proc in self.workers:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self.workers:
            assert proc.stdout is not None
            out = await asyncio.wait_for(proc.stdout.read(), STOP_DEADLINE)
            await asyncio.wait_for(proc.wait(), STOP_DEADLINE)
            lines = [line for line in out.decode().splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                self.reports.append(json.loads(lines[-1]))
            else:
                self.reports.append({"unexpected": [f"worker exited {proc.returncode}"]})
        seconds = loop.time() - started
        await settle(lambda: not (server.connections or server.topics), 10.0)
        leftover_connections = len(server.connections)
        leftover_topics = len(server.topics)
        await server.close()
        await settle(lambda: not asyncio.all_tasks() - baseline_tasks, 5.0)
        leftover_tasks = [repr(t.get_coro()) for t in asyncio.all_tasks() - baseline_tasks]
        gc.collect()
        fds_end = open_fds()
        rss_end = rss_mb()
        warm = [mb for t, mb in self.rss if t >= seconds / 3] or [rss_end]
        return self.summary(
            seconds=seconds,
            leaks={
                "connections": leftover_connections,
                "topics": leftover_topics,
                "tasks": len(leftover_tasks),
                "fds": fds_end - fds_start,
            },
            leftover_tasks=leftover_tasks[:5],
            rss={
                "warm": round(warm[0], 1),
                "max": round(max(mb for _, mb in self.rss or [(0, rss_end)]), 1),
                "end": round(rss_end, 1),
            },
        )

    def summary(self, **extra: Any) -> dict[str, Any]:
        """Fold the workers' reports and the server's counts into one summary."""
        total: Counter[str] = Counter()
        unexpected: list[str] = []
        lost = self.lost
        clean_clients = self.counts["clean_clients"]
        clean_messages = self.counts["clean_messages"]
        for report in self.reports:
            for key in (
                "requests",
                "pings",
                "messages",
                "publishes",
                "clients",
                "interrupted",
                "wrong",
            ):
                total[key] += int(report.get(key, 0))
            unexpected.extend(report.get("unexpected", []))
        rss = extra["rss"]
        growth = rss["end"] - rss["warm"]
        summary: dict[str, Any] = {
            "seconds": round(extra["seconds"], 1),
            "workers": self.args.workers,
            "clients_per_worker": self.args.clients,
            "worker_processes_started": self.counts["workers"],
            "clients_created": total["clients"],
            "connects": self.counts["connects"],
            "reconnects": self.counts["reconnects"],
            "faults": {
                k: self.faults[k]
                for k in ("worker_kills", "server_drops", "server_closes", *ATTACKS)
            },
            # Counted by the server, over every client (killed workers' included):
            "server_requests_answered": self.counts["server_requests"],
            "server_messages_received": self.counts["server_messages"],
            # Counted by the workers still running at the end:
            "requests_ok": total["requests"] - total["wrong"],
            "pings": total["pings"],
            "messages_sent": total["messages"],
            "publish_roundtrips": total["publishes"],
            "interrupted_by_faults": total["interrupted"],
            "clean_clients_checked": clean_clients,
            "clean_messages_checked": clean_messages,
            "lost": lost,
            "disorder": self.disorder,
            "wrong": total["wrong"],
            "unexpected": unexpected[:10],
            "server_errors": dict(self.errors),
            "server_error_samples": self.error_samples,
            "leaks": extra["leaks"],
            "leftover_tasks": extra["leftover_tasks"],
            "rss_mb": rss,
            "rss_growth_mb": round(growth, 1),
        }
        summary["ok"] = (
            lost == 0
            and self.disorder == 0
            and total["wrong"] == 0
            and not unexpected
            and extra["leaks"] == {"connections": 0, "topics": 0, "tasks": 0, "fds": 0}
            and growth <= self.args.rss_growth_mb
            and clean_clients > 0
        )
        return summary

    async def cleanup(self) -> None:
        """Kill any worker still running; remove the socket folder."""
        for proc in self.workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 10.0)
        shutil.rmtree(self.folder, ignore_errors=True)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak with a hard deadline."""
    run = Soak(args)
    try:
        return await asyncio.wait_for(run.run(), args.seconds + 90.0)
    finally:
        await run.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 0 when nothing was lost or leaked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2, help="client processes at any time")
    parser.add_argument("--clients", type=int, default=20, help="client lanes per worker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-growth-mb", type=float, default=16.0)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(args.worker, args.clients, args.seed))
        return 0
    summary = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
