"""The actor processes of ``ipc-server demo``: a server or a client, told what to do on stdin.

``python -m ipc_server.cli.demo_actors server|client --path PATH [--name NAME]``
runs one actor. It reads commands as JSON lines on its stdin (``{"cmd": ...}``)
and reports what happens as JSON lines on its stdout (``{"event": ...}``),
which the director (``ipc_server.cli.demo``) narrates. An actor exits by
itself after ``ACTOR_LIFETIME``, or when its stdin closes (the director is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable
from typing import Any

from .._loop import run as run_loop
from ..client import IPCClient
from ..errors import IPCError, RemoteError
from ..server import IPCConnection, IPCServer
from .output import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, to_json

__all__ = ("ACTOR_LIFETIME", "actor_main")

ACTOR_LIFETIME = 30.0
"""Seconds after which an actor process exits whatever happens."""


def _say(event: str, **fields: Any) -> None:
    """Report one event to the director."""
    sys.stdout.write(to_json({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Thread: stdin lines to the loop (portable; a pipe on Windows cannot be read by asyncio)."""

    def put(item: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already gone
            loop.call_soon_threadsafe(queue.put_nowait, item)

    for line in sys.stdin:
        try:
            command = json.loads(line)
        except ValueError:
            continue
        if isinstance(command, dict):
            put(command)
    put({"cmd": "eof"})


def _commands() -> asyncio.Queue[dict[str, Any]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_commands, args=(loop, queue), daemon=True).start()
    return queue


async def _server_actor(path: str) -> int:
    server = IPCServer(path=path)

    @server.on("ready")
    def _ready(address: str) -> None:
        _say("ready", address=address, pid=os.getpid())

    @server.on("connect")
    def _connect(conn: IPCConnection, payload: Any) -> None:
        pid = conn.peer.pid if conn.peer is not None else None
        _say("connect", id=conn.id, payload=payload, pid=pid)

    @server.on("disconnect")
    def _disconnect(conn: IPCConnection, reason: Any) -> None:
        _say("disconnect", id=conn.id, reason=str(reason))

    @server.on("error")
    def _error(error: BaseException, conn: IPCConnection | None) -> None:
        cid = conn.id if conn is not None else None
        _say("error", id=cid, type=type(error).__name__, error=str(error))

    @server.on("request")
    async def _request(request: Any, respond: Any, conn: IPCConnection) -> None:
        _say("request", id=conn.id, data=request)
        if isinstance(request, dict):
            args = request.get("args") or [0, 0]
            if request.get("cmd") == "add":
                await respond(sum(args))
                return
            if request.get("cmd") == "divide":
                await respond(args[0] / args[1])  # 1/0 raises: the client gets a RemoteError
                return
        await respond({"echo": request})

    await server.start()
    commands = _commands()
    while True:
        command = await commands.get()
        cmd = command.get("cmd")
        if cmd == "survey":
            answers = await server.survey(command.get("data"), timeout=3.0)
            results = [
                {"id": conn.id, "reply": reply}
                if not isinstance(reply, BaseException)
                else {"id": conn.id, "error": f"{type(reply).__name__}: {reply}"}
                for conn, reply in answers
            ]
            _say("survey", results=results)
        elif cmd == "topics":
            topics = {topic: [c.id for c in conns] for topic, conns in server.topics.items()}
            _say("topics", topics=topics)
        elif cmd in ("close", "eof"):
            allow = bool(command.get("allow_reconnect"))
            await server.close(allow_reconnect=allow, timeout=3.0)
            _say("closed", allow_reconnect=allow)
            return EXIT_OK if cmd == "close" else EXIT_ERROR


async def _client_actor(path: str, name: str) -> int:
    # A short retry cap so that it is back soon after the new server is up.
    client = IPCClient(
        path=path, retries=20, max_retry_time=1.0, connect_timeout=3.0, request_timeout=3.0
    )
    commands = _commands()
    readies = 0

    @client.on("ready")
    def _ready(info: dict[str, Any]) -> None:
        nonlocal readies
        readies += 1
        _say("ready", id=client.id, again=readies > 1, topics=client.topics)

    @client.on("status")
    def _status(status: Any) -> None:
        _say("status", status=status.name)

    @client.on("close")
    def _close(reason: Any) -> None:
        _say("close", reason=str(reason))
        commands.put_nowait({"cmd": "closed"})

    @client.on("error")
    def _error(error: BaseException) -> None:
        _say("error", type=type(error).__name__, error=str(error))

    @client.on("message")
    def _message(message: Any) -> None:
        _say("message", topic=None, data=message)

    @client.on("request")
    async def _asked(request: Any, respond: Any) -> None:
        answer = {"name": name, "pid": os.getpid(), "topics": client.topics}
        await respond(answer)
        _say("asked", data=request, answer=answer)

    await client.connect({"name": name, "pid": os.getpid()})
    while True:
        command = await commands.get()
        cmd = command.get("cmd")
        if cmd == "request":
            started = time.perf_counter()
            try:
                reply = await client.request(command.get("data"))
            except RemoteError as exc:
                _say("remote_error", type=exc.type, message=exc.message)
                continue
            ms = (time.perf_counter() - started) * 1000.0
            _say("reply", data=reply, ms=round(ms, 3))
        elif cmd == "subscribe":
            topic = str(command.get("topic"))
            client.on(
                topic, lambda message, topic=topic: _say("message", topic=topic, data=message)
            )
            ok = await client.subscribe(topic)
            _say("subscribed", topic=topic, ok=ok)
        elif cmd == "publish":
            topic, data = str(command.get("topic")), command.get("data")
            ok = await client.publish(topic, data)
            _say("published", topic=topic, data=data, ok=ok)
        elif cmd == "closed":
            return EXIT_OK
        elif cmd == "eof":
            client.destroy("director gone")
            return EXIT_ERROR


def actor_main(argv: list[str] | None = None) -> int:
    """Entry point of an actor process (``python -m ipc_server.cli.demo_actors server|client``)."""
    parser = argparse.ArgumentParser(prog="python -m ipc_server.cli.demo_actors")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--path", required=True)
    parser.add_argument("--name", default="client")
    args = parser.parse_args(argv)
    actor: Awaitable[int] = (
        _server_actor(args.path) if args.role == "server" else _client_actor(args.path, args.name)
    )
    try:
        return run_loop(_bounded(actor, ACTOR_LIFETIME))
    except (asyncio.TimeoutError, TimeoutError):
        _say("gave_up", after=ACTOR_LIFETIME)
        return EXIT_TIMEOUT
    except (OSError, IPCError) as exc:  # e.g. no server at the path
        _say("failed", type=type(exc).__name__, error=str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


async def _bounded(actor: Awaitable[int], seconds: float) -> int:
    return await asyncio.wait_for(actor, seconds)


if __name__ == "__main__":
    sys.exit(actor_main())
