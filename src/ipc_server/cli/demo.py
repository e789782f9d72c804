"""``ipc-server demo``: a server and three clients in separate processes, narrated.

This process is the director. It starts every actor as
``python -m ipc_server.cli.demo_actors server|client ...`` on a temporary
socket, tells them what to do with JSON lines on their stdin, and narrates
what they report as JSON lines on their stdout. The script: clients connect
with a payload; request/response (and a handler that raises); the server
surveys the clients; pub/sub between clients; a client process is killed; the
server closes with ``allow_reconnect=True`` and a new server process takes its
place, the clients reconnect by themselves and their subscription still works;
then the server closes for good and every process exits.

A pause of ``PAUSE`` seconds before each step after the first lets a person
read what happened (``--fast``: none). Every wait has a deadline, the whole
demo is bounded by ``DEADLINE`` plus its pauses, and every actor exits by
itself (see ``ipc_server.cli.demo_actors``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

from .._loop import run as run_loop
from .output import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    PROG,
    Output,
    isatty,
    report_error,
    to_json,
)

__all__ = ("ACTORS", "DEADLINE", "PAUSE", "STEPS", "STEP_TIMEOUT", "cmd_demo", "run_demo")

ACTORS = "ipc_server.cli.demo_actors"
"""The module each actor process runs (``python -m``)."""

DEADLINE = 14.0
"""Seconds the whole demo may take before it gives up (exit 3)."""

PAUSE = 1.5
"""Seconds of pause before each step after the first (none with ``--fast``)."""

STEPS = 8
"""How many steps the demo has."""

STEP_TIMEOUT = 5.0
"""Seconds any one expected event may take."""

CLIENTS = ("alice", "bob", "carol")


class DemoFailed(Exception):
    """The demo did not go as scripted."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


_COLORS = {"demo": "1", "server": "36", "alice": "32", "bob": "33", "carol": "35"}


class Director:
    """Starts the actors, tells them what to do, narrates what they report."""

    def __init__(
        self, path: str, *, json_lines: bool, stream: TextIO, pause: float = PAUSE
    ) -> None:
        self.path = path
        self.pause = pause
        self.json_lines = json_lines
        self.stream = stream
        self.color = not json_lines and isatty(stream) and "NO_COLOR" not in os.environ
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.deadline = self.t0 + DEADLINE
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.names: dict[str, str] = {}  # connection id -> client name
        self.killed: set[str] = set()
        self.reconnecting: dict[str, int] = {}  # actor -> connect attempts since the server left
        self.steps = 0

    # ------------------------------------------------------------------ output

    def line(self, actor: str, event: str, text: str, **fields: Any) -> None:
        """One narrated line: JSON (``t``, ``actor``, ``event``, ``text``, fields) or text."""
        t = self.loop.time() - self.t0
        if self.json_lines:
            record = {"t": round(t, 3), "actor": actor, "event": event, "text": text, **fields}
            self.stream.write(to_json(record) + "\n")
        else:
            who = f"{actor:<7}"
            if self.color:
                who = f"\x1b[{_COLORS.get(actor, '0')}m{who}\x1b[0m"
            pad = " " * 16
            body = text.replace("\n", "\n" + pad)
            self.stream.write(f"{t:6.2f}s  {who} {body}\n")
        self.stream.flush()

    async def step(self, title: str) -> None:
        """Start the next step, after a pause to read the last one (not counted in the deadline)."""
        if self.steps and self.pause > 0:
            await asyncio.sleep(self.pause)
            self.deadline += self.pause
        self.steps += 1
        text = f"-- {self.steps}. {title}"
        if not self.json_lines:
            self.stream.write("\n")
            if self.color:
                text = f"\x1b[1m{text}\x1b[0m"
        self.line("demo", "step", text, step=self.steps, title=title)

    def who(self, cid: Any) -> str:
        return self.names.get(str(cid), str(cid))

    def narrate(self, actor: str, ev: dict[str, Any]) -> None:
        """Turn an actor's event into a readable line (some events are quiet)."""
        event = str(ev.get("event"))
        fields = {k: v for k, v in ev.items() if k != "event"}
        text = self._describe(actor, event, ev)
        if text is not None:
            self.line(actor, event, text, **fields)

    def _describe(self, actor: str, event: str, ev: dict[str, Any]) -> str | None:
        j = to_json
        if actor == "server":
            if event == "ready":
                return f"listening on {ev['address']} (pid {ev['pid']})"
            if event == "connect":
                payload = ev.get("payload")
                name = payload.get("name") if isinstance(payload, dict) else None
                if name:
                    self.names[str(ev["id"])] = str(name)
                return f"connect: {name} (id {ev['id']}, pid {ev.get('pid')}), payload {j(payload)}"
            if event == "disconnect":
                return f"disconnect: {self.who(ev['id'])} ({ev['reason']})"
            if event == "request":
                return f"request from {self.who(ev['id'])}: {j(ev['data'])}"
            if event == "error":
                text = f"error event: {ev['type']}: {ev['error']}"
                if ev["type"] not in ("ProtocolError", "HandshakeError", "MessageTooLargeError"):
                    text += " (a handler raised: the requester gets a RemoteError)"
                return text
            if event == "survey":
                lines = [f"survey answered by {len(ev['results'])} client(s):"]
                for r in ev["results"]:
                    got = j(r["reply"]) if "reply" in r else r.get("error")
                    lines.append(f"  {self.who(r['id'])} -> {got}")
                return "\n".join(lines)
            if event == "closed":
                if ev.get("allow_reconnect"):
                    return "closed with allow_reconnect=True: clients may come back"
                return "closed for good"
            if event == "topics":
                return None  # polled; the director reports the outcome
        else:
            if event == "ready":
                if ev.get("again"):
                    tries = self.reconnecting.pop(actor, 0)
                    text = f"reconnected by itself after {tries} attempt(s), same id {ev['id']}"
                    if ev.get("topics"):
                        text += f"; restoring its subscriptions {j(ev['topics'])}"
                    return text
                return f"ready, the server gave id {ev['id']}"
            if event == "status":
                status = ev.get("status")
                if status == "RECONNECTING" and actor not in self.reconnecting:
                    self.reconnecting[actor] = 0
                    return "lost the server (it allowed reconnect): retrying with backoff"
                if status == "CONNECTING" and actor in self.reconnecting:
                    self.reconnecting[actor] += 1
                return None
            if event == "reply":
                return f"reply in {ev['ms']:.2f} ms: {j(ev['data'])}"
            if event == "remote_error":
                return f"request failed with RemoteError: {ev['type']}: {ev['message']}"
            if event == "asked":
                return f"the server asked {j(ev['data'])}; answered {j(ev['answer'])}"
            if event == "subscribed":
                return f"subscribed to {ev['topic']!r}"
            if event == "published":
                return f"published to {ev['topic']!r}: {j(ev['data'])}"
            if event == "message":
                topic = ev.get("topic")
                where = f"{topic!r}" if topic is not None else "broadcast"
                return f"got a {where} message: {j(ev['data'])}"
            if event == "close":
                return f"closed for good: {ev['reason']}"
        if event == "exit":
            code = ev.get("code")
            if actor in self.killed:
                return f"process killed by the demo (exit {code})"
            return f"process exited with code {code}"
        if event == "error":
            return f"error: {ev.get('type')}: {ev.get('error')}"
        return f"{event}: {j({k: v for k, v in ev.items() if k != 'event'})}"

    # ------------------------------------------------------------------ actors

    async def start(self, actor: str, *argv: str) -> None:
        """Start an actor process; its reports are narrated and kept for ``expect``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            ACTORS,
            *argv,
            "--path",
            self.path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.procs[actor] = proc
        self.killed.discard(actor)
        self.readers.append(self.loop.create_task(self._read(actor, proc)))

    async def _read(self, actor: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = {"event": "output", "line": raw.decode(errors="replace").rstrip()}
            if not isinstance(ev, dict):
                continue
            self._arrived(actor, ev)
        code = await proc.wait()
        self._arrived(actor, {"event": "exit", "code": code})

    def _arrived(self, actor: str, ev: dict[str, Any]) -> None:
        self.narrate(actor, ev)
        self.pending.append((actor, ev))
        self.changed.set()

    def tell(self, actor: str, **command: Any) -> None:
        """Send a command to an actor (a JSON line on its stdin)."""
        proc = self.procs[actor]
        assert proc.stdin is not None
        proc.stdin.write((to_json(command) + "\n").encode())

    def kill(self, actor: str) -> None:
        """Kill an actor's process without warning (SIGKILL; TerminateProcess on Windows)."""
        self.killed.add(actor)
        self.line("demo", "kill", f"killing {actor}'s process (pid {self.procs[actor].pid})")
        self.procs[actor].kill()

    async def expect(
        self, actor: str, event: str, timeout: float = STEP_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """Wait for (and consume) the first report of ``event`` by ``actor`` matching ``match``."""
        limit = min(self.loop.time() + timeout, self.deadline)
        while True:
            for i, (who, ev) in enumerate(self.pending):
                if (
                    who == actor
                    and ev.get("event") == event
                    and all(ev.get(k) == v for k, v in match.items())
                ):
                    del self.pending[i]
                    return ev
            remaining = limit - self.loop.time()
            if remaining <= 0:
                what = f"{actor} {event}" + (f" {to_json(match)}" if match else "")
                raise DemoFailed(f"timed out waiting for {what}", EXIT_TIMEOUT)
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def poll(
        self, ask: Callable[[], None], actor: str, event: str, ok: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """Ask again until the answer satisfies ``ok`` (with a deadline)."""
        limit = min(self.loop.time() + STEP_TIMEOUT, self.deadline)
        while True:
            ask()
            ev = await self.expect(actor, event, timeout=max(0.0, limit - self.loop.time()))
            if ok(ev):
                return ev
            if self.loop.time() >= limit:
                raise DemoFailed(f"{actor} never reported the expected {event}", EXIT_TIMEOUT)
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        """Kill whatever still runs; wait for it (bounded)."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def _script(d: Director) -> None:
    await d.step("a server in its own process")
    await d.start("server", "server")
    await d.expect("server", "ready")

    await d.step("three clients connect, each with a payload")
    for name in CLIENTS:
        await d.start(name, "client", "--name", name)
    ids: dict[str, str] = {}
    for name in CLIENTS:
        ids[name] = str((await d.expect(name, "ready"))["id"])
    for _ in CLIENTS:
        await d.expect("server", "connect")

    await d.step("request / response: alice asks, the server answers")
    d.tell("alice", cmd="request", data={"cmd": "add", "args": [2, 3]})
    reply = await d.expect("alice", "reply")
    if reply.get("data") != 5:
        raise DemoFailed(f"2 + 3 came back as {reply.get('data')!r}")
    d.tell("alice", cmd="request", data={"cmd": "divide", "args": [1, 0]})
    await d.expect("alice", "remote_error")

    await d.step("server -> client requests: the server surveys every client")
    d.tell("server", cmd="survey", data={"cmd": "status"})
    survey = await d.expect("server", "survey")
    if len(survey["results"]) != len(CLIENTS):
        raise DemoFailed(f"survey reached {len(survey['results'])} of {len(CLIENTS)} clients")

    await d.step("publish / subscribe between clients")
    d.tell("bob", cmd="subscribe", topic="news")
    await d.expect("bob", "subscribed", ok=True)
    d.tell("alice", cmd="publish", topic="news", data={"headline": "hello from alice"})
    await d.expect("alice", "published", ok=True)
    await d.expect("bob", "message", topic="news")

    await d.step("a client process is killed: the server notices")
    d.kill("carol")
    await d.expect("server", "disconnect", id=ids["carol"])
    await d.expect("carol", "exit")

    await d.step("the server restarts: close(allow_reconnect=True), then a new server process")
    d.tell("server", cmd="close", allow_reconnect=True)
    await d.expect("server", "closed")
    await d.expect("server", "exit", code=0)
    await d.start("server", "server")
    await d.expect("server", "ready")
    for name in ("alice", "bob"):
        await d.expect(name, "ready", again=True, id=ids[name])
    topics = await d.poll(
        lambda: d.tell("server", cmd="topics"),
        "server",
        "topics",
        lambda ev: ids["bob"] in ev["topics"].get("news", []),
    )
    d.line(
        "server",
        "topics",
        "topic 'news' has subscriber bob again (restored by the client, "
        "this server process never saw the original subscribe)",
        topics=topics["topics"],
    )
    d.tell("alice", cmd="publish", topic="news", data={"headline": "we are back"})
    await d.expect("alice", "published", ok=True)
    await d.expect("bob", "message", topic="news", data={"headline": "we are back"})

    await d.step("everything closes: server.close() for good, clients close and exit")
    d.tell("server", cmd="close")
    for name in ("alice", "bob"):
        await d.expect(name, "close")
    for name in ("server", "alice", "bob"):
        await d.expect(name, "exit", code=0)


async def _direct(json_lines: bool, stream: TextIO, pause: float) -> int:
    folder = tempfile.mkdtemp(prefix="ipc") if os.name != "nt" else None
    path = os.path.join(folder, "demo.sock") if folder else f"ipc-demo-{os.getpid()}"
    d = Director(path, json_lines=json_lines, stream=stream, pause=pause)
    d.line("demo", "start", f"socket {path}; this process (pid {os.getpid()}) directs", path=path)
    started = time.monotonic()
    try:
        await _script(d)
    except DemoFailed as exc:
        d.line("demo", "failed", f"FAILED: {exc}", error=str(exc))
        report_error(f"{PROG} demo", str(exc))
        return exc.code
    finally:
        await d.cleanup()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.monotonic() - started
    if not json_lines:
        stream.write("\n")
    d.line(
        "demo",
        "done",
        f"done in {seconds:.1f} s: every process exited cleanly",
        seconds=round(seconds, 2),
    )
    return EXIT_OK


def run_demo(*, json_lines: bool, stream: TextIO | None = None, pause: float = PAUSE) -> int:
    """Run the demo; returns the exit code (0 ok, 1 failed, 3 timed out)."""
    out = stream if stream is not None else sys.stdout
    try:
        return run_loop(_direct(json_lines, out, pause))
    except KeyboardInterrupt:
        print(f"{PROG} demo: interrupted", file=sys.stderr, flush=True)
        return EXIT_ERROR


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``ipc-server demo``: run the demo, narrated to ``out`` as JSON lines or text."""
    return run_demo(json_lines=out.json, stream=out.stream, pause=0.0 if args.fast else PAUSE)
