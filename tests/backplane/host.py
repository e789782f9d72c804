"""An IPCServer with a NatsBackplane in a process of its own: one "host" of a cluster test.

Run as ``python tests/backplane/host.py '<json>'`` (``Hosts`` in conftest does
it): the JSON gives ``path`` (the server's Unix socket), ``url``,
``namespace`` and ``options`` (keyword options of ``NatsBackplane``). It prints
``{"event": "ready", "server_id": ..., "up": ...}`` once started, then reads
one JSON command per line on stdin and answers each with ``{"id": ...,
"result": ...}`` (commands run concurrently). Clients of the tests connect to
the socket. Commands (``op``): ``publish`` (``topics``, ``count``, ``rate``:
messages a second, 0 for as fast as the outbox takes them; each message is
``[server_id, topic index, i]``), ``survey`` (``data``, ``seconds``,
``scope``), ``members`` (``least``: wait until that many), ``report``
(the backplane's stats, the gaps seen per origin, what was published per
topic, the events), ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from typing import Any

if __name__ == "__main__":
    here = os.path.dirname(__file__)
    sys.path[:0] = [os.path.join(here, "..", "..", "src"), os.path.join(here, "..")]

from backplane.peer import say, serve_commands
from ipc_server import IPCServer
from ipc_server.backplane import NatsBackplane


class _Host:
    def __init__(self, config: dict[str, Any]) -> None:
        self.backplane = NatsBackplane(
            servers=[config["url"]], namespace=config.get("namespace", "test"), **config["options"]
        )
        self.server = IPCServer(path=config["path"], backplane=self.backplane)
        self.sent: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.events: list[list[Any]] = []
        self.peak = 0
        self.server.on("backplane", self._event)
        self.server.on("request", lambda data, respond, conn: respond({"echo": data}))

    def _event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "gap":
            self.missed[info["origin"]] += info["missed"]
        else:
            self.events.append([kind, info.get("reason", "")])

    async def run(self) -> None:
        await self.server.start()
        say({"event": "ready", "server_id": self.server.server_id, "up": self.backplane.is_up})
        await serve_commands(self.do)
        await self.server.close()

    async def do(self, command: dict[str, Any]) -> Any:
        op = command["op"]
        server, backplane = self.server, self.backplane
        if op == "publish":
            return await self.publish(command["topics"], command["count"], command.get("rate", 0))
        if op == "survey":
            slots = await server.survey(
                command["data"], command["seconds"], scope=command.get("scope", "local")
            )
            return [
                [
                    who if isinstance(who, str) else "local",
                    {"error": type(a).__name__, "text": str(a)}
                    if isinstance(a, BaseException)
                    else a,
                ]
                for who, a in slots
            ]
        if op == "members":
            while len(backplane.members()) < command.get("least", 0):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            return backplane.members()
        if op == "report":
            return {
                "stats": server.stats()["backplane"],
                "missed": dict(self.missed),
                "sent": dict(self.sent),
                "events": self.events,
                "peak": self.peak,
            }
        raise ValueError(f"unknown op {op!r}")

    async def publish(self, topics: list[str], count: int, rate: float) -> int:
        server, backplane = self.server, self.backplane
        name = server.server_id
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i in range(count):
            index = i % len(topics)
            await server.publish(topics[index], [name, index, i])
            self.sent[topics[index]] += 1
            self.peak = max(self.peak, backplane.stats()["queued_bytes"])
            if rate:
                ahead = began + (i + 1) / rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif i % 200 == 199:
                await asyncio.sleep(0)
                # As fast as the broker takes them while it is up.
                while backplane.is_up and backplane.stats()["queued_bytes"] > 256 * 1024:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        return count


if __name__ == "__main__":
    asyncio.run(_Host(json.loads(sys.argv[1])).run())
