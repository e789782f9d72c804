"""Load and soak (DESIGN "Reliability principles").

1,000 concurrent clients (in two subprocesses) make 100 requests each against
one server, every answer checked; and ``scripts/soak.py`` runs for ~5 s with
random client kills and reconnects, ending with no leaked fd, task,
connection or topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import wait_until, within
from ipc_server import IPCClient, IPCConnection, IPCServer

ROOT = Path(__file__).resolve().parent.parent
HERE = os.path.abspath(__file__)

CLIENTS = 1_000
REQUESTS = 100
PROCESSES = 2


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit on open files to ``needed`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def answer_for(request: Any) -> Any:
    """What the load server answers to a request ``{"c": client, "i": index}``."""
    return {"c": request["c"], "i": request["i"], "r": request["c"] * 1_000 + request["i"]}


async def test_thousand_clients_hundred_requests_each(sock_path: str) -> None:
    """1,000 clients connected at once, 100 requests each: 100,000 correct answers, nothing lost."""
    raise_fd_limit(CLIENTS * 2 + 512)
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    loop.set_debug(False)  # debug mode (conftest) costs ~4x here: this test measures throughput
    server = IPCServer(path=sock_path)
    seen = {"requests": 0}

    async def handler(request: Any, respond: Any, conn: IPCConnection) -> None:
        seen["requests"] += 1
        await respond(answer_for(request))

    server.on("request", handler)
    await within(server.start())
    share = CLIENTS // PROCESSES
    procs = []
    try:
        for k in range(PROCESSES):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    HERE,
                    sock_path,
                    str(k * share),
                    str(share),
                    str(REQUESTS),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            assert (await within(proc.stdout.readline(), 30)).strip() == b"CONNECTED"
        assert len(server.connections) == CLIENTS  # all of them at once
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"GO\n")
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(await within(proc.stdout.readline(), 45)))
        for proc in procs:
            assert await within(proc.wait()) == 0
        assert sum(r["ok"] for r in results) == CLIENTS * REQUESTS
        assert [r["bad"] for r in results] == [[] for _ in procs]
        assert seen["requests"] == CLIENTS * REQUESTS
        await wait_until(lambda: not server.connections, "every client to leave")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await within(proc.wait())
        await within(server.close())
        loop.set_debug(debug)


def test_soak_short() -> None:
    """scripts/soak.py for ~5 s: kills and reconnects, nothing lost, no leaked fd/task/topic."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, f"soak failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"], summary
    assert summary["faults"]["worker_kills"] >= 1
    assert summary["faults"]["server_drops"] >= 1
    assert summary["lost"] == 0
    assert summary["wrong"] == 0
    assert summary["leaks"] == {"connections": 0, "topics": 0, "tasks": 0, "fds": 0}


# ---------------------------------------------------------------------- the child process


async def clients_process(path: str, first: int, count: int, requests: int) -> None:
    """Connect ``count`` clients, wait for GO, run ``requests`` requests each; print a summary."""
    raise_fd_limit(count + 512)
    clients = [IPCClient(path=path, reconnect=False) for _ in range(count)]
    for start in range(0, count, 100):  # connect in waves: the listen backlog is finite
        batch = clients[start : start + 100]
        await asyncio.gather(*(c.connect(first + start + i) for i, c in enumerate(batch)))
    print("CONNECTED", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    ok = 0
    bad: list[str] = []

    async def run(index: int, client: IPCClient) -> None:
        nonlocal ok
        for i in range(requests):
            request = {"c": first + index, "i": i}
            try:
                answer = await client.request(request, timeout=30)
            except Exception as exc:
                bad.append(f"{request}: {exc!r}")
                continue
            if answer == answer_for(request):
                ok += 1
            else:
                bad.append(f"{request}: {answer!r}")

    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    print(json.dumps({"ok": ok, "bad": bad[:10]}), flush=True)
    await asyncio.gather(*(c.close() for c in clients))


if __name__ == "__main__":
    socket_path, first_id, how_many, per_client = sys.argv[1:5]
    asyncio.run(clients_process(socket_path, int(first_id), int(how_many), int(per_client)))
