"""What the request-side bounds cost when crossed: the figures of docs/reliability.md.

Each attack runs against a fresh ``tests/bound_server.py`` (a server in its
own process, default options, uvloop) while a bystander client pings it every
20 ms, and prints one JSON line: the server's peak memory (its own ``VmHWM``)
and what it holds at the end (resident memory, tasks), the bystander's
slowest round trip, and what the attacker saw.

- ``inflight``: one client pipelines 200,000 requests to an ``async def``
  handler that sleeps (``max_concurrent_requests``), then leaves
  (``cancel_on_disconnect``);
- ``unread``: one client sends requests to the plain echo handler for 10 s
  and never reads an answer (the server stops reading it);
- ``topics``: one client subscribes to 300,000 topics of 1,000 characters
  (``max_topics_per_connection``), then leaves;
- ``stopped``: a client process is stopped with SIGSTOP (``keepalive_interval``
  2 s for the run: the default, 30 s, would make it a 90 s wait);
- ``partial``: half a 1 MB packet, then silence (``read_timeout`` 2 s for the run).

Usage::

    python scripts/request_bounds.py                 # every attack
    python scripts/request_bounds.py inflight unread # some of them
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "src")]

from boundkit import BoundServer, Bystander, flood, raw_packet, raw_peer  # noqa: E402
from ipc_server import IPCClient  # noqa: E402
from ipc_server.packets import REQUEST  # noqa: E402


def requests(count: int, payload: Any = "x") -> bytes:
    return b"".join(raw_packet(REQUEST, payload, str(i)) for i in range(count))


async def inflight() -> dict[str, Any]:
    with BoundServer(handler="sleep", sleep=3600) as server:
        async with Bystander(server.path) as bystander:
            sock = await asyncio.to_thread(raw_peer, server.path)
            sent = await asyncio.to_thread(flood, sock, requests(200), 5.0)  # as many as it takes
            during = await server.astats()
            sock.close()
            deadline = time.monotonic() + 10
            while (after := await server.astats())["tasks"] > 2 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return {
            "attack": "inflight",
            "requests_sent": sent * 200,
            "tasks_while_held": during["tasks"],
            "rss_mib_while_held": round(during["rss_mib"], 1),
            "tasks_after_it_left": after["tasks"],
            "peak_mib": round(after["peak_mib"], 1),
            "bystander_worst_ms": round(bystander.worst * 1000, 1),
        }


async def unread() -> dict[str, Any]:
    with BoundServer(handler="echo") as server:
        async with Bystander(server.path) as bystander:
            sock = await asyncio.to_thread(raw_peer, server.path)
            chunks = await asyncio.to_thread(flood, sock, requests(100, "y" * 1000), 10.0)
            stats = await server.astats()
            sock.close()
        return {
            "attack": "unread",
            "requests_sent": chunks * 100,
            "tasks": stats["tasks"],
            "rss_mib": round(stats["rss_mib"], 1),
            "peak_mib": round(stats["peak_mib"], 1),
            "still_connected": stats["connections"] == 2,
            "bystander_worst_ms": round(bystander.worst * 1000, 1),
        }


async def topics() -> dict[str, Any]:
    with BoundServer() as server:
        async with Bystander(server.path) as bystander:
            client = await IPCClient(path=server.path).connect()
            accepted = refused = 0
            for start in range(0, 300_000, 1000):
                names = [f"{i:08d}".ljust(1000, "t") for i in range(start, start + 1000)]
                if await client.subscribe(names, timeout=30):
                    accepted += len(names)
                else:
                    refused += len(names)
            during = await server.astats()
            await client.close()
            after = await server.astats()
        return {
            "attack": "topics",
            "topics_accepted": accepted,
            "topics_refused": refused,
            "rss_mib_subscribed": round(during["rss_mib"], 1),
            "rss_mib_after_it_left": round(after["rss_mib"], 1),
            "peak_mib": round(after["peak_mib"], 1),
            "bystander_worst_ms": round(bystander.worst * 1000, 1),
        }


async def stopped() -> dict[str, Any]:
    with BoundServer({"keepalive_interval": 2.0}) as server:
        code = (
            "import sys, time; sys.path.insert(0, 'src');"
            "from ipc_server.sync import IPCClient;"
            f"c = IPCClient(path={server.path!r}).connect(); print('up', flush=True); time.sleep(600)"
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=subprocess.PIPE, cwd=ROOT
        )
        assert child.stdout is not None
        await child.stdout.readline()
        child.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while (stats := await server.astats())["connections"]:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        dropped = time.monotonic() - started
        child.send_signal(signal.SIGCONT)
        child.kill()
        await child.wait()
        return {
            "attack": "stopped",
            "keepalive_interval_s": 2.0,
            "dropped_after_s": round(dropped, 2),
            "reason": next((e for e in stats["errors"] if "keepalive" in e), None),
        }


async def partial() -> dict[str, Any]:
    with BoundServer({"read_timeout": 2.0}) as server:
        sock = await asyncio.to_thread(raw_peer, server.path)
        packet = raw_packet(REQUEST, "x" * 1_000_000, "1")
        sock.sendall(packet[: len(packet) // 2])
        started = time.monotonic()
        while (stats := await server.astats())["connections"]:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        dropped = time.monotonic() - started
        sock.close()
        return {
            "attack": "partial",
            "read_timeout_s": 2.0,
            "dropped_after_s": round(dropped, 2),
            "rss_mib_after": round(stats["rss_mib"], 1),
            "reason": next((e for e in stats["errors"] if "read timeout" in e), None),
        }


ATTACKS = {f.__name__: f for f in (inflight, unread, topics, stopped, partial)}


def main(argv: list[str]) -> int:
    for name in argv or list(ATTACKS):
        print(json.dumps(asyncio.run(ATTACKS[name]())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
