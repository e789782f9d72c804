"""A worker in a process of its own: ``python worker.py FRONT PATH MARKER``.

It connects to the server at PATH with the FRONT client (``asyncio`` or
``blocking``) and serves ``hang``: each call creates the file MARKER and is
never answered. Once registered it creates ``MARKER.ready``. The test kills
it with SIGKILL in the middle of a call.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any


def blocking(path: str, marker: Path) -> None:
    from ipc_server.sync import IPCClient

    client = IPCClient(path=path).connect()

    def hang(request: Any, respond: Any) -> None:
        marker.touch()
        time.sleep(60)

    client.serve("hang", hang)
    marker.with_suffix(".ready").touch()
    time.sleep(60)


async def asyncio_worker(path: str, marker: Path) -> None:
    from ipc_server import IPCClient

    client = await IPCClient(path=path).connect()

    async def hang(request: Any, respond: Any) -> None:
        await asyncio.to_thread(marker.touch)
        await asyncio.sleep(60)

    await client.serve("hang", hang)
    await asyncio.to_thread(marker.with_suffix(".ready").touch)
    await asyncio.sleep(60)


if __name__ == "__main__":
    front, path, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if front == "blocking":
        blocking(path, marker)
    else:
        asyncio.run(asyncio_worker(path, marker))
