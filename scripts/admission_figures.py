"""Figures for docs/reliability.md, "Admission": the cost of crossing each bound.

Each run starts a server in its own process (``tests/boundkit.py``), an
honest client that pings it meanwhile (the bystander), crosses one bound, and
prints what it cost: the slowest refusal, the server's resident and peak
memory (``/proc/<pid>/status``), its CPU time, its log lines and the
bystander's slowest round trip. Linux only (``/proc``, ``RLIMIT_NOFILE``).

Usage::

    python scripts/admission_figures.py handshaking   # 256 silent peers, 200 newcomers
    python scripts/admission_figures.py full          # 1,024 descriptors, the default max_connections
    python scripts/admission_figures.py descriptors   # max_connections=None: out of descriptors
    python scripts/admission_figures.py tls           # 300 silent TCP peers of a TLS server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from boundkit import BoundServer, Bystander, raw_peer  # noqa: E402
from ipc_server import IPCClient, IPCServer  # noqa: E402

LOOPS = ("asyncio", "uvloop")


def limit(n: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> str:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
    return f"RSS {values['VmRSS']:.1f} MiB (peak {values['VmHWM']:.1f})"


def silent(path: str, count: int) -> list[socket.socket]:
    peers = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        peers.append(sock)
    return peers


async def newcomers(count: int, **address: Any) -> str:
    """``count`` clients that try to connect, one after the other: the slowest, and what they got."""
    worst = 0.0
    seen: set[str] = set()
    for _ in range(count):
        started = time.perf_counter()
        try:
            client = await IPCClient(reconnect=False, **address).connect(timeout=5)
            seen.add("admitted")
            client.destroy()
        except Exception as exc:
            seen.add(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")
        worst = max(worst, time.perf_counter() - started)
    return f"{count} newcomers, slowest {worst * 1000:.1f} ms, got {sorted(seen)}"


async def until(check: Callable[[], Any]) -> None:
    """Poll ``check`` (a plain or coroutine function) until it answers something true."""
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.01)


def lines(log: Any) -> int:
    log.seek(0)
    return len(log.readlines())


async def handshaking(loop: str) -> None:
    with BoundServer({"handshake_timeout": 60}, loop=loop) as server:
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(silent, server.path, 256)

            async def counted() -> bool:
                return bool((await server.astats())["handshaking"] == 256)

            await until(counted)
            used = cpu(server.pid)
            outcome = await newcomers(200, path=server.path)
            print(
                f"max_handshaking [{loop}]: 256 silent peers; {outcome}; {memory(server.pid)}, "
                f"CPU {cpu(server.pid) - used:.2f} s; bystander slowest {bystander.worst * 1000:.1f} ms"
            )
            for peer in peers:
                peer.close()


async def full(loop: str) -> None:
    n = 1024 - 102  # the default for 1,024 descriptors
    with (
        tempfile.TemporaryFile("w+") as log,
        BoundServer(
            {"handshake_timeout": 60}, loop=loop, preexec=limit(1024), stderr=log
        ) as server,
    ):
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(lambda: [raw_peer(server.path) for _ in range(n - 1)])
            admitted = (await server.astats())["connections"]
            used, started = cpu(server.pid), time.monotonic()
            outcome = await newcomers(200, path=server.path)
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
            print(
                f"max_connections [{loop}]: {admitted} admitted; {outcome}; {memory(server.pid)}, "
                f"CPU {cpu(server.pid) - used:.2f} s in {time.monotonic() - started:.1f} s, "
                f"{lines(log)} log lines; bystander slowest {bystander.worst * 1000:.1f} ms"
            )
            for peer in peers:
                peer.close()


async def descriptors(loop: str) -> None:
    options = {"max_connections": None, "handshake_timeout": 60}
    with (
        tempfile.TemporaryFile("w+") as log,
        BoundServer(options, loop=loop, preexec=limit(1024), stderr=log) as server,
    ):
        async with Bystander(server.path) as bystander:
            peers = await asyncio.to_thread(silent, server.path, 1124)
            await until(lambda: len(os.listdir(f"/proc/{server.pid}/fd")) >= 1023)
            used, started = cpu(server.pid), time.monotonic()
            outcome = await newcomers(100, path=server.path)
            await asyncio.sleep(max(0.0, 8.0 - (time.monotonic() - started)))
            print(
                f"out of descriptors [{loop}]: 1,124 silent peers; {outcome}; {memory(server.pid)}, "
                f"CPU {cpu(server.pid) - used:.2f} s in {time.monotonic() - started:.1f} s, "
                f"{lines(log)} log lines; bystander slowest {bystander.worst * 1000:.1f} ms"
            )
            for peer in peers:
                peer.close()


def tls(loop: str) -> None:
    import trustme

    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    pid = os.getpid()

    async def main() -> None:
        server = IPCServer(host="127.0.0.1", port=0, ssl=server_ssl, handshake_timeout=1.0)
        errors: list[BaseException] = []
        server.on("error", lambda error, connection: errors.append(error))
        await server.start()
        address = {"host": "127.0.0.1", "port": server.port, "ssl": client_ssl}
        bystander = await IPCClient(**address).connect()
        before = memory(pid)
        peers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        await until(lambda: len(server._handshaking) >= 256)
        await asyncio.sleep(0.2)  # the 44 others are accepted (and refused) too
        counted, during = len(server._handshaking), memory(pid)
        outcome = await newcomers(20, **address)
        ping = await bystander.ping()
        started = time.monotonic()
        await until(lambda: not server._handshaking)
        print(
            f"TLS [{loop}]: 300 silent TCP peers, {counted} counted; {outcome}; "
            f"test process {before} before, {during} with them; bystander ping {ping * 1000:.1f} ms; "
            f"all forgotten {time.monotonic() - started:.2f} s later (handshake_timeout=1); "
            f"{len(errors)} error events"
        )
        for peer in peers:
            peer.close()
        bystander.destroy()
        await server.close()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["handshaking", "full", "descriptors", "tls"])
    what = parser.parse_args().what
    for loop in LOOPS:
        if what == "tls":
            tls(loop)
        else:
            asyncio.run(
                {"handshaking": handshaking, "full": full, "descriptors": descriptors}[what](loop)
            )


if __name__ == "__main__":
    main()
