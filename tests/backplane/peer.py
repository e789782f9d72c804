"""A fake server for the backplane (``FakeHost``), and a backplane in a process of its own.

``FakeHost`` implements ``BackplaneHost`` and records what the backplane hands
it. Messages the tests publish are ``[publisher, topic index, i]``: the host
checks that ``i`` grows per (origin, topic), so duplicates and reordering
are counted, not just losses.

Run as ``python tests/backplane/peer.py '<json>'`` (``Peers`` in conftest does
it): the JSON gives ``server_id``, ``url`` and ``options`` (keyword options of
``NatsBackplane``). The process reads one JSON command per line on stdin and
answers each with ``{"id": ..., "result": ...}`` on stdout (commands run
concurrently), and prints ``{"event": "call_started"}`` when a held call
starts. Commands (``op``): ``interest`` (``patterns``), ``service`` (``name``),
``publish`` (``topics``, ``count``: round robin, paced so the outbox never
overflows unless ``pace`` is false), ``call``, ``survey``, ``members``
(``least``: wait until that many), ``report``, ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from ipc_server.backplane import NatsBackplane


class FakeHost:
    """Records deliveries, events and errors; answers calls and surveys as told.

    Attributes:
        hold: When true, ``remote_call`` and ``remote_survey`` never return
            (``started`` is set when one begins).
    """

    def __init__(self, server_id: str, *, keep: bool = True) -> None:
        self._id = server_id
        self.keep = keep
        self.deliveries: list[tuple[str, Any, str]] = []
        self.received: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[BaseException] = []
        self.calls: list[tuple[str, Any]] = []
        self.groups: list[tuple[str, str, str, Any]] = []
        self.broadcasts: list[tuple[Any, str]] = []
        self.disorder = 0
        self.hold = False
        self.fail = False
        self.started = asyncio.Event()
        self._last: dict[tuple[str, str], int] = {}

    @property
    def server_id(self) -> str:
        return self._id

    def deliver_remote(self, topic: str, message: Any, origin: str) -> None:
        self.received[origin] += 1
        if self.keep:
            self.deliveries.append((topic, message, origin))
        if isinstance(message, list) and len(message) == 3 and isinstance(message[2], int):
            key = (origin, topic)
            if message[2] <= self._last.get(key, -1):
                self.disorder += 1
            self._last[key] = message[2]

    def deliver_group(self, topic: str, pattern: str, group: str, message: Any) -> None:
        self.groups.append((topic, pattern, group, message))

    def deliver_broadcast(self, message: Any, origin: str) -> None:
        self.broadcasts.append((message, origin))

    def backplane_event(self, kind: str, info: dict[str, Any]) -> None:
        self.events.append((kind, info))
        if kind == "gap":
            self.missed[info["origin"]] += info["missed"]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events if kind != "gap"]

    async def remote_call(self, service: str, data: Any, timeout: float | None) -> Any:
        self.calls.append((service, data))
        self.started.set()
        if self.hold:
            await asyncio.Event().wait()
        if self.fail:
            raise ValueError(f"refused {data!r}")
        return {"echo": data, "by": self._id, "service": service}

    async def remote_survey(self, data: Any, timeout: float | None) -> list[Any]:
        self.started.set()
        if self.hold:
            await asyncio.Event().wait()
        return [f"{self._id}:{data}"]

    def report(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.deliveries]


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "text": str(exc)}


def say(line: dict[str, Any]) -> None:
    """One JSON line on stdout, for the test that runs this process."""
    sys.stdout.write(json.dumps(line, default=repr) + "\n")
    sys.stdout.flush()


async def serve_commands(do: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
    """Answer the JSON commands on stdin, one a line, each as it comes (they run at once),
    with ``{"id": ..., "result": ...}``; until ``{"op": "quit"}`` or the end of stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(command: dict[str, Any]) -> None:
        try:
            result = await do(command)
        except Exception as exc:
            result = _error(exc)
        say({"id": command["id"], "result": result})

    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] == "quit":
            return
        task = loop.create_task(answer(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class _Peer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host = FakeHost(config["server_id"], keep=False)
        self.backplane = NatsBackplane(
            servers=[config["url"]], namespace=config.get("namespace", "test"), **config["options"]
        )
        self.sent: Counter[str] = Counter()

    async def run(self) -> None:
        await self.backplane.start(self.host)
        say({"event": "ready", "up": self.backplane.is_up})
        await serve_commands(self.do)
        await self.backplane.close()

    async def do(self, command: dict[str, Any]) -> Any:
        backplane, host, op = self.backplane, self.host, command["op"]
        if op == "interest":
            return [await backplane.add_interest(p) for p in command["patterns"]]
        if op == "service":
            host.hold = command.get("hold", False)
            await backplane.add_service(command["name"])
            if host.hold:
                asyncio.get_running_loop().create_task(self._tell_started())
            return True
        if op == "publish":
            return await self.publish(
                command["topics"], command["count"], command.get("pace", True)
            )
        if op == "call":
            try:
                return {
                    "value": await backplane.call(
                        command["name"], command["data"], command["timeout"]
                    )
                }
            except Exception as exc:
                return _error(exc)
        if op == "survey":
            slots = await backplane.survey(command["data"], command["timeout"])
            return [
                [server, _error(answer) if isinstance(answer, BaseException) else answer]
                for server, answer in slots
            ]
        if op == "members":
            while len(backplane.members()) < command.get("least", 0):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            return backplane.members()
        if op == "report":
            return {
                "received": dict(host.received),
                "missed": dict(host.missed),
                "disorder": host.disorder,
                "sent": dict(self.sent),
                "stats": backplane.stats(),
                "errors": [repr(e) for e in host.errors[:10]],
            }
        raise ValueError(f"unknown op {op!r}")

    async def _tell_started(self) -> None:
        await self.host.started.wait()
        say({"event": "call_started"})

    async def publish(self, topics: list[str], count: int, pace: bool) -> int:
        backplane = self.backplane
        name = self.host.server_id
        limit = backplane.stats()["queued_bytes"]
        for i in range(count):
            index = i % len(topics)
            backplane.publish(topics[index], [name, index, i])
            self.sent[topics[index]] += 1
            if i % 500 == 499:
                await asyncio.sleep(0)
                while pace and backplane.stats()["queued_bytes"] > max(limit, 256 * 1024):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        return count


if __name__ == "__main__":
    asyncio.run(_Peer(json.loads(sys.argv[1])).run())
