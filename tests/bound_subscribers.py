"""Subscribers in their own process, for the bound tests: they read, and tell what they got.

Run as ``python tests/bound_subscribers.py '<json>'``: the JSON gives ``path``,
``count`` (how many clients), ``topic``, ``compress`` and ``expect`` (how many
messages each waits for). It prints ``READY`` once every client has
subscribed, then, once each got ``expect`` messages (or after ``timeout``
seconds), one JSON line: per client, the length and CRC-32 of each message
(str or bytes) in the order it came, or the message itself (anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import zlib
from typing import Any

if importlib.util.find_spec("ipc_server") is None:  # not installed: this checkout's src/
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from ipc_server import IPCClient


def summary(message: Any) -> Any:
    """A short stand-in for what a message was."""
    if isinstance(message, str):
        message = message.encode()
    if isinstance(message, bytes):
        return [len(message), zlib.crc32(message)]
    return message


async def main(config: dict[str, Any]) -> None:
    count, expect = int(config["count"]), int(config["expect"])
    got: list[list[Any]] = [[] for _ in range(count)]
    done = asyncio.Event()
    clients = []

    def listener(index: int) -> Any:
        def on_message(message: Any) -> None:
            got[index].append(summary(message))
            if all(len(g) >= expect for g in got):
                done.set()

        return on_message

    for index in range(count):
        client = IPCClient(path=config["path"], compress=bool(config.get("compress")))
        await client.connect()
        client.on(config["topic"], listener(index))
        await client.subscribe(config["topic"])
        clients.append(client)
    print("READY", flush=True)
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):  # report what came
        await asyncio.wait_for(done.wait(), float(config.get("timeout", 30)))
    print(json.dumps(got), flush=True)
    for client in clients:
        client.destroy()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(json.loads(sys.argv[1])))
