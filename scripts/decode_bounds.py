"""What the decode bounds cost when crossed: the figures of docs/reliability.md.

Each attack runs against a fresh ``tests/bound_server.py`` (a server in its
own process, default options, uvloop) while a bystander client pings it
every 10 ms, and prints one JSON line: the server's peak memory growth
(its own ``VmHWM``), the bystander's slowest round trip, how long the server
was busy, and the reason in the END the attacker got.

- ``handshake``: 32 unadmitted peers each announce a 60 MiB CONNECTION and
  send 1 MiB of it (``max_handshake_size``);
- ``msgpack-compressed`` / ``json-compressed``: one admitted peer sends a
  packet of empty maps that inflates to 64 MiB (63.7 KiB on the wire);
- ``msgpack`` / ``json``: the same, 16 MiB uncompressed
  (``max_packet_objects``).

Usage::

    python scripts/decode_bounds.py                      # every attack
    python scripts/decode_bounds.py handshake msgpack    # some of them
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import zlib
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "src")]

from boundkit import BoundServer, Bystander  # noqa: E402
from ipc_server.codecs import CodecName, PacketCodec  # noqa: E402
from ipc_server.packets import END, hello  # noqa: E402
from ipc_server.protocol import FrameDecoder, encode_tag, frame  # noqa: E402

MiB = 1 << 20


def empty_maps(codec: CodecName, size: int) -> bytes:
    """A MESSAGE body of about ``size`` bytes whose data is a list of empty maps."""
    if codec == "msgpack":
        n = size - 16
        return b"\x82\xa1t\x01\xa1d\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    n = size // 3
    return b'{"t":1,"d":[' + b"{}," * (n - 1) + b"{}]}"


def read_end(sock: socket.socket, reader: PacketCodec, timeout: float) -> Any:
    """The reason of the END the server sent (None: none within ``timeout``)."""
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not data:
            return None
        for body in decoder.feed(data):
            t, d, _, _ = reader.decode(body)
            if t == END:
                return d["m"] if isinstance(d, dict) else d


def admitted_peer(path: str, codec: CodecName, compress: bool) -> tuple[socket.socket, PacketCodec]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(b"IPC" + hello(None, None, compress=compress, codec=codec))
    decoder: FrameDecoder = FrameDecoder()
    while not decoder.feed(sock.recv(65536)):
        pass
    reader = PacketCodec()
    reader.configure(messagepack=codec == "msgpack", compress=compress)
    return sock, reader


async def bomb(codec: CodecName, compress: bool, size: int) -> dict[str, Any]:
    body = empty_maps(codec, size)
    if compress:
        deflate = zlib.compressobj(wbits=-15)
        body = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
    with BoundServer() as server:
        before = await server.astats()
        async with Bystander(server.path, interval=0.01, timeout=60) as bystander:
            sock, reader = await asyncio.to_thread(admitted_peer, server.path, codec, compress)
            started = time.perf_counter()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(sock.sendall, frame(body))
            await server.astats(timeout=120)  # answered once the server's loop is free again
            busy = time.perf_counter() - started
            reason = await asyncio.to_thread(read_end, sock, reader, 0.5)
            sock.close()
            after = await server.astats()
    return {
        "attack": f"{codec}{'-compressed' if compress else ''}",
        "inflated_mib": round(size / MiB, 1),
        "wire_kib": round(len(body) / 1024, 1),
        "peak_growth_mib": round(after["peak_mib"] - before["peak_mib"], 1),
        "bystander_worst_ms": round(bystander.worst * 1000, 1),
        "server_busy_s": round(busy, 2),
        "reason": reason,
    }


async def handshake() -> dict[str, Any]:
    def attack(path: str) -> list[socket.socket]:
        socks = []
        for _ in range(32):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(path)
            with contextlib.suppress(OSError):
                sock.sendall(b"IPC" + encode_tag(60 * MiB) + b" " * MiB)
            socks.append(sock)
        return socks

    with BoundServer() as server:
        before = await server.astats()
        async with Bystander(server.path, interval=0.01) as bystander:
            socks = await asyncio.to_thread(attack, server.path)
            after = await server.astats()
            reason = await asyncio.to_thread(read_end, socks[0], PacketCodec(), 1.0)
        for sock in socks:
            sock.close()
    return {
        "attack": "handshake: 32 peers announce a 60 MiB CONNECTION, send 1 MiB of it",
        "peak_growth_mib": round(after["peak_mib"] - before["peak_mib"], 1),
        "handshaking": after["handshaking"],
        "bystander_worst_ms": round(bystander.worst * 1000, 1),
        "reason": reason,
    }


ATTACKS = {
    "handshake": handshake,
    "msgpack-compressed": lambda: bomb("msgpack", True, 64 * MiB - 64),
    "json-compressed": lambda: bomb("json", True, 64 * MiB - 64),
    "msgpack": lambda: bomb("msgpack", False, 16 * MiB),
    "json": lambda: bomb("json", False, 16 * MiB),
}


async def main(names: list[str]) -> None:
    for name in names or list(ATTACKS):
        print(json.dumps(await ATTACKS[name]()), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
