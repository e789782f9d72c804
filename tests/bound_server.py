"""A server in its own process for the bound tests: it listens, and tells what it holds.

Run as ``python tests/bound_server.py '<json>'`` (``tests/boundkit.py`` does it):
the JSON gives ``path`` (the server's socket), ``control`` (a second socket,
on which requests ``"stats"``, ``"gc"`` are answered), ``options`` (keyword
options of ``IPCServer``), ``handler`` (what ``request`` does: ``"echo"``, a
plain function; ``"async_echo"``; ``"sleep"``, an ``async def`` that sleeps
``sleep`` seconds then answers; ``"never"``, one that waits forever) and
``loop`` (``"uvloop"`` or ``"asyncio"``). With ``backplane`` (``url``,
``namespace``, ``options`` of ``NatsBackplane``, and ``serve``: a service that
a worker of its own serves and never answers), the server has a backplane.
It prints ``READY`` once both listen.

``{"survey": seconds}`` makes the server survey the cluster for that long and
answers with the number of slots it returned.

``stats`` answers with the process's resident and peak memory, its task
count, the server's connections, handshaking peers and topics, and the
``error`` events it saw (the last 100, and how many in all; ``error_connections``:
the id of the connection each of those named, or None); with a backplane,
also its ``stats()`` and the streams and heartbeats it keeps
(``streams``, ``heard``) and the most its subscriptions' inbound queues held
at once since it started, sampled every 5 ms (``queued_peak`` broker
messages, ``queued_bytes_peak``), and the most members it knew at once
(``members_most``) and the fewest since then (``members_fewest``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import sys
from collections import deque
from typing import Any

if importlib.util.find_spec("ipc_server") is None:  # not installed: this checkout's src/
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from ipc_server import IPCClient, IPCConnection, IPCServer, Respond

PAGE = os.sysconf("SC_PAGE_SIZE")


def memory() -> dict[str, float]:
    """Resident and peak memory of this process, in MiB."""
    with open("/proc/self/statm") as f:
        size, resident, *_ = (int(x) for x in f.read().split())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it would
    # report the test process's size whenever that was bigger than this server.
    with open("/proc/self/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {
        "rss_mib": resident * PAGE / 2**20,
        "vm_mib": size * PAGE / 2**20,
        "peak_mib": peak_kib / 1024,
    }


async def main(config: dict[str, Any]) -> None:
    linked = config.get("backplane")
    backplane: Any = None
    if linked:
        from ipc_server.backplane import NatsBackplane

        backplane = NatsBackplane(
            servers=[linked["url"]], namespace=linked["namespace"], **linked.get("options", {})
        )
        server = IPCServer(path=config["path"], backplane=backplane, **config.get("options", {}))
    else:
        server = IPCServer(path=config["path"], **config.get("options", {}))
    errors: deque[str] = deque(maxlen=100)
    count = [0]
    error_ids: deque[str | None] = deque(maxlen=100)

    def on_error(error: BaseException, connection: IPCConnection | None) -> None:
        count[0] += 1
        errors.append(f"{type(error).__name__}: {error}")
        error_ids.append(None if connection is None else connection.id)

    server.on("error", on_error)
    handler = config.get("handler", "echo")
    pause = float(config.get("sleep", 3600.0))
    if handler == "echo":
        server.on("request", lambda request, respond, connection: respond(request))
    elif handler == "async_echo":

        async def async_echo(request: Any, respond: Respond, connection: IPCConnection) -> None:
            await respond(request)

        server.on("request", async_echo)
    elif handler in ("sleep", "never"):

        async def sleeper(request: Any, respond: Respond, connection: IPCConnection) -> None:
            await asyncio.sleep(pause if handler == "sleep" else 1e9)
            await respond(request)

        server.on("request", sleeper)
    control = IPCServer(path=config["control"])

    async def on_control(request: Any, respond: Respond, connection: IPCConnection) -> None:
        if request == "gc":
            gc.collect()
            respond(True)
        elif request == "stats":
            held: dict[str, Any] = {}
            if backplane is not None:
                tracker = backplane._tracker
                held = {
                    "backplane": server.stats()["backplane"],
                    "streams": len(tracker),
                    "heard": len(tracker._heard),
                    "queued_peak": queued[0],
                    "queued_bytes_peak": queued[1],
                    "members_most": queued[2],
                    "members_fewest": queued[3],
                }
            respond(
                {
                    **held,
                    **memory(),
                    "tasks": len(asyncio.all_tasks()),
                    "connections": len(server.connections),
                    "handshaking": len(server._handshaking),
                    "topics": len(server.topics),
                    "errors": list(errors),
                    "error_count": count[0],
                    "error_connections": list(error_ids),
                }
            )
        elif isinstance(request, dict) and "survey" in request:
            slots = await server.survey("q", float(request["survey"]), scope="cluster")
            respond(len(slots))
        else:
            respond(None)

    control.on("request", on_control)
    await server.start()
    queued = [0, 0, 0, 0]
    sampler = None if backplane is None else asyncio.ensure_future(sample_queues(backplane, queued))
    if linked and linked.get("serve"):
        worker = IPCClient(path=config["path"])
        await worker.connect()

        async def never(request: Any, respond: Respond) -> None:
            await asyncio.Event().wait()

        await worker.serve(linked["serve"], never)
    await control.start()
    print("READY", flush=True)
    await asyncio.Event().wait()
    del sampler  # held until here: the loop keeps tasks only weakly


async def sample_queues(backplane: Any, peak: list[int]) -> None:
    """Keep in ``peak`` the most broker messages and bytes its subscriptions'
    inbound queues (nats-py's) held together, the most members it knew, and
    the fewest since it knew that many, looking every 5 ms."""
    while True:
        await asyncio.sleep(0.005)
        count = size = 0
        for sub in list(backplane._subs._subs.values()):
            nats_sub = sub.sub
            if nats_sub is not None:
                count += nats_sub._pending_queue.qsize()
                size += nats_sub._pending_size
        peak[0] = max(peak[0], count)
        peak[1] = max(peak[1], size)
        members = len(backplane.members())
        if members > peak[2]:
            peak[2] = peak[3] = members
        peak[3] = min(peak[3], members)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    if settings.get("loop", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main(settings))
    else:
        asyncio.run(main(settings))
