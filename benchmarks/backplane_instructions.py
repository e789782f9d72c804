"""Instructions per cross-host round trip, counted by callgrind: ours against raw nats-py
and the local ping-pong.

    python -m benchmarks.backplane_instructions            # default loop
    python -m benchmarks.backplane_instructions --loop uvloop

The same ping-pong as ``benchmarks.backplane``'s ``rtt``, with every end in
ONE process under callgrind (the broker runs outside it, uncounted):

- ``ours``: server A and server B, each with its backplane, a client of each;
  client A publishes ``ping``, client B publishes ``pong`` back;
- ``raw``: two nats-py connections, one publishing ``raw.ping``, the other
  answering ``raw.pong``;
- ``local``: one server, no broker, two clients playing the same ping-pong.

Each runs N and 2N round trips after the same warm-up; the figure is
``(I(2N) - I(N)) / N``, twice, checked to agree within 0.5 %, as in
``benchmarks.instructions``. ``ours - raw - local`` is what the backplane
adds to a round trip beyond what nats-py and the local hops cost alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.backplane import PAYLOAD, ROOT, Broker, _backplane
from benchmarks.callgrind import TOTALS
from benchmarks.instructions import real_python

MODES = ("ours", "raw", "local")
WARMUP = 500
TOLERANCE = 0.005


async def _ping_pong_clients(a: Any, b: Any, n: int) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] | None = None

    def on_pong(message: Any) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    a.on("pong", on_pong)
    b.on("ping", lambda message: asyncio.ensure_future(b.publish("pong", message)))
    if await a.subscribe("pong") is not True or await b.subscribe("ping") is not True:
        raise RuntimeError("subscribe did not return True")
    for k in (WARMUP, n):
        for _ in range(k):
            waiter = loop.create_future()
            await a.publish("ping", PAYLOAD)
            await asyncio.wait_for(waiter, 10)


async def _raw(url: str, n: int) -> None:
    import nats

    a, b = await nats.connect(url), await nats.connect(url)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] | None = None

    async def on_pong(msg: Any) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.data)

    async def on_ping(msg: Any) -> None:
        await b.publish("raw.pong", msg.data)

    await a.subscribe("raw.pong", cb=on_pong)
    await b.subscribe("raw.ping", cb=on_ping)
    await a.flush()
    await b.flush()
    body = json.dumps(PAYLOAD).encode()
    for k in (WARMUP, n):
        for _ in range(k):
            waiter = loop.create_future()
            await a.publish("raw.ping", body)
            await asyncio.wait_for(waiter, 10)


async def _child(mode: str, url: str, n: int) -> None:
    from ipc_server import IPCClient, IPCServer

    folder = tempfile.mkdtemp(prefix="bpi", dir="/tmp")
    if mode == "raw":
        await _raw(url, n)
    elif mode == "ours":
        a = IPCServer(path=f"{folder}/a", backplane=_backplane(url))
        b = IPCServer(path=f"{folder}/b", backplane=_backplane(url))
        await a.start()
        await b.start()
        ca, cb = IPCClient(path=f"{folder}/a"), IPCClient(path=f"{folder}/b")
        await ca.connect()
        await cb.connect()
        await _ping_pong_clients(ca, cb, n)
    else:
        server = IPCServer(path=f"{folder}/l")
        await server.start()
        ca, cb = IPCClient(path=f"{folder}/l"), IPCClient(path=f"{folder}/l")
        await ca.connect()
        await cb.connect()
        await _ping_pong_clients(ca, cb, n)
    sys.stdout.write(f"DONE {mode} {n}\n")
    sys.stdout.flush()
    os._exit(0)  # no teardown: it is not the round trips' cost


def _count(python: str, loop: str, mode: str, url: str, n: int, out: Path) -> int:
    file = out / f"callgrind.{mode}.{n}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={file}", python]
    cmd += ["-m", "benchmarks.backplane_instructions", "--child", mode, url, str(n), loop]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False
    )
    if done.returncode != 0 or f"DONE {mode} {n}" not in done.stdout:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{mode} {n} under callgrind failed:\n{tail}")
    match = TOTALS.search(file.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        raise RuntimeError(f"no instruction total in {file}")
    return int(match.group(1))


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backplane_instructions")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("-n", type=int, default=2_000, help="round trips of the smaller run (2,000)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, url, n, loop = args.child
        if loop == "uvloop":
            import uvloop

            uvloop.run(_child(mode, url, int(n)))
        else:
            asyncio.run(_child(mode, url, int(n)))
        return 0
    python, version = real_python(sys.executable)
    print(f"Python {version}, {args.loop}, the broker outside the count", file=sys.stderr)
    broker = Broker()
    broker.start()
    figures: dict[str, float] = {}
    unstable = []
    try:
        with tempfile.TemporaryDirectory(prefix="bpcg") as tmp:
            for mode in MODES:
                reps = []
                for _ in range(args.repeat):
                    small = _count(python, args.loop, mode, broker.url, args.n, Path(tmp))
                    large = _count(python, args.loop, mode, broker.url, 2 * args.n, Path(tmp))
                    reps.append((large - small) / args.n)
                    print(f"  {mode}: {reps[-1]:,.0f} per round trip", file=sys.stderr)
                figures[mode] = sum(reps) / len(reps)
                if (max(reps) - min(reps)) / figures[mode] > TOLERANCE:
                    unstable.append(mode)
    finally:
        broker.kill()
    rest = figures["ours"] - figures["raw"] - figures["local"]
    print(f"Instructions per cross-host round trip, Python {version}, {args.loop}")
    for mode in MODES:
        print(f"  {mode:<22}{figures[mode]:>12,.0f}")
    print(f"  {'ours - raw - local':<22}{rest:>12,.0f}  ({rest / figures['ours']:.1%} of ours)")
    if unstable:
        print("unstable: " + ", ".join(unstable), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
