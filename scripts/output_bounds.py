"""The figures of docs/reliability.md, "Output: slow readers and fan-out".

Each run starts a server in its own process (``tests/boundkit.BoundServer``)
and prints one JSON line:

- ``fanout``: ``--peers`` raw subscribers that never read, one publish of
  ``--mib`` MiB: the server's peak and held RSS, the publish's round trip,
  the slowest ping of a bystander.
- ``compressed``: ``--peers`` compressed subscribers (in a child process) that
  read, a publish of ``--mib`` MiB between two small ones: the publish's round
  trip, the slowest bystander ping, whether every subscriber got the three in
  order, the server's peak RSS.
- ``deadline``: one raw subscriber that stops reading and one that reads,
  ``--mib`` MiB published in 32 KiB messages, ``write_deadline`` of
  ``--deadline`` s: when the server dropped the stalled one, the publisher's
  slowest publish, the slowest bystander ping.

Usage::

    python scripts/output_bounds.py fanout --loop asyncio --peers 40 --mib 60
    python scripts/output_bounds.py compressed --loop uvloop --peers 50 --mib 4
    python scripts/output_bounds.py deadline --loop asyncio --deadline 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import zlib
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from boundkit import BoundServer, Bystander, raw_packet, raw_peer  # noqa: E402
from ipc_server import IPCClient  # noqa: E402

MIB = 1024 * 1024


def subscribe(path: str, client_id: str) -> Any:
    """A raw subscriber to "feed" that never reads after the subscribe answer."""
    sock = raw_peer(path, client_id=client_id)
    sock.sendall(raw_packet(2, {"sub": "feed"}, "s1"))
    sock.recv(65536)
    return sock


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    with BoundServer({}, loop=args.loop) as server:
        peers = [subscribe(server.path, f"s{i}") for i in range(args.peers)]
        publisher = await IPCClient(path=server.path).connect()
        before = await server.astats()
        async with Bystander(server.path) as bystander:
            begun = time.perf_counter()
            await publisher.publish("feed", "x" * (args.mib * MIB), timeout=60)
            published = time.perf_counter() - begun
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # let the transports settle
                held = await server.astats()
                await asyncio.sleep(0.2)
        publisher.destroy()
        for sock in peers:
            sock.close()
    return {
        "rss_before_mib": round(before["rss_mib"], 1),
        "peak_mib": round(held["peak_mib"], 1),
        "held_mib": round(held["rss_mib"], 1),
        "publish_s": round(published, 3),
        "worst_ping_s": round(bystander.worst, 3),
        "connections": held["connections"],
    }


async def compressed(args: argparse.Namespace) -> dict[str, Any]:
    payload = os.urandom(args.mib * MIB // 2).hex()
    script = os.path.join(HERE, "..", "tests", "bound_subscribers.py")
    with BoundServer({}, loop=args.loop) as server:
        config = {"path": server.path, "count": args.peers, "topic": "feed"}
        config.update(compress=True, expect=3, timeout=120)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, script, json.dumps(config), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"READY"
        publisher = await IPCClient(path=server.path).connect()
        before = await server.astats()
        async with Bystander(server.path) as bystander:
            await publisher.publish("feed", 1)
            begun = time.perf_counter()
            await publisher.publish("feed", payload, timeout=120)
            published = time.perf_counter() - begun
            await publisher.publish("feed", 2, timeout=120)
            line = await proc.stdout.readline()
            delivered = time.perf_counter() - begun
        after = await server.astats()
        publisher.destroy()
        await proc.wait()
    want = [1, [len(payload), zlib.crc32(payload.encode())], 2]
    return {
        "publish_s": round(published, 3),
        "delivered_s": round(delivered, 3),
        "worst_ping_s": round(bystander.worst, 3),
        "ping_failures": len(bystander.failures),
        "all_in_order": all(got == want for got in json.loads(line)),
        "rss_before_mib": round(before["rss_mib"], 1),
        "peak_mib": round(after["peak_mib"], 1),
    }


async def deadline(args: argparse.Namespace) -> dict[str, Any]:
    with BoundServer({"write_deadline": args.deadline}, loop=args.loop) as server:
        stalled = subscribe(server.path, "stalled")
        got: list[int] = []
        count = args.mib * 32
        all_in = asyncio.Event()

        def on_feed(message: Any) -> None:
            got.append(message[0])
            if len(got) == count:
                all_in.set()

        reader = await IPCClient(path=server.path).connect()
        reader.on("feed", on_feed)
        await reader.subscribe("feed")
        publisher = await IPCClient(path=server.path).connect()
        before = await server.astats()
        blob = "y" * 32768
        slowest = 0.0
        async with Bystander(server.path) as bystander:
            begun = time.monotonic()
            for i in range(count):
                started = time.perf_counter()
                await publisher.publish("feed", [i, blob])
                slowest = max(slowest, time.perf_counter() - started)
            while True:
                stats = await server.astats()
                if any("write_deadline" in e for e in stats["errors"]):
                    break
                await asyncio.sleep(0.05)
            dropped = time.monotonic() - begun
            await asyncio.wait_for(all_in.wait(), 60)
        reader.destroy()
        publisher.destroy()
        stalled.close()
    return {
        "dropped_after_s": round(dropped, 2),
        "error": stats["errors"][-1],
        "named": stats["error_connections"][-1],
        "slowest_publish_s": round(slowest, 3),
        "worst_ping_s": round(bystander.worst, 3),
        "reader_got": len(got),
        "rss_before_mib": round(before["rss_mib"], 1),
        "peak_mib": round(stats["peak_mib"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", choices=("fanout", "compressed", "deadline"))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--peers", type=int, default=40)
    parser.add_argument("--mib", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args()
    if args.mib is None:
        args.mib = {"fanout": 60, "compressed": 4, "deadline": 8}[args.run]
    run = {"fanout": fanout, "compressed": compressed, "deadline": deadline}[args.run]
    result = asyncio.run(run(args))
    print(json.dumps({"run": args.run, "loop": args.loop, **vars(args), **result}))


if __name__ == "__main__":
    main()
