"""The commands that run a server: ``serve`` (echo + pub/sub, logged) and ``reply`` (answers).

Both log one line per event, with the time: ``HH:MM:SS.mmm  event  text`` on a
terminal, a JSON object with ``"event"`` and ``"time"`` (ISO 8601 with the
UTC offset) otherwise. Both stop gracefully on Ctrl-C or SIGTERM.

``reply`` is the server side of ``request`` (the ``nats reply`` habit): a
server whose every request is answered by the shell, with the request
itself (``--echo``), a fixed value (``DATA``), or the stdout of a command
that gets the request as JSON on its stdin (``--command``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import AddressInUseError
from ..events import Respond
from ..server import IPCConnection, IPCServer
from ..writes import Responder
from .data import STDIN, parse_data, read_all
from .output import EXIT_OK, EXIT_USAGE, CommandError, Output, clock, timestamp, to_json
from .session import address_kwargs, no_limit, stop_on_signals

__all__ = ("cmd_reply", "cmd_serve")


class _Log:
    """One line per event, with the time: text on a terminal, JSON lines otherwise."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, event: str, text: str, **fields: Any) -> None:
        now = _dt.datetime.now()
        if self.out.json:
            self.out.emit(event, "", time=timestamp(now), **fields)
        else:
            self.out.emit(event, f"{clock(now)}  {event:<11}  {text}")


class _ServeServer(IPCServer):
    """The server of ``serve``: it also tells ``on_pubsub`` of each pub/sub request.

    The library answers subscribe, unsubscribe and publish itself, without an
    event; ``serve`` logs them from here, as they come (before they are answered:
    a refused subscription is an ``error`` line after it).
    """

    on_pubsub: Callable[[IPCConnection, str, Any, Any], None] | None = None

    def pubsub_request(
        self, conn: IPCConnection, request: tuple[str, Any, Any], respond: Responder
    ) -> None:
        watch = self.on_pubsub
        if watch is not None:
            watch(conn, *request)
        super().pubsub_request(conn, request, respond)


def _make_server(args: argparse.Namespace, cls: type[IPCServer] = IPCServer) -> IPCServer:
    try:
        return cls(
            **address_kwargs(args),
            codec=args.codec,
            compress=not args.no_compress,
            socket_mode=args.socket_mode,
            allow_stats=True if getattr(args, "allow_stats", False) else None,
        )
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc


def _peer(conn: IPCConnection) -> tuple[int | None, int | None]:
    peer = conn.peer
    return (None, None) if peer is None else (peer.pid, peer.uid)


async def _start(server: IPCServer) -> None:
    try:
        await server.start()
    except AddressInUseError as exc:
        raise CommandError(f"{exc.strerror}") from exc


# ---------------------------------------------------------------------- serve


def _log_server_events(server: IPCServer, log: _Log, quiet: bool) -> None:
    """The lines of ``serve``: connects, disconnects, errors; unless quiet, all traffic."""

    @server.on("ready")
    def _ready(address: str) -> None:
        compress = "on" if server.compress else "off"
        log(
            "ready",
            f"listening on {address} (pid {os.getpid()}, codec {server.codec}, "
            f"compression {compress}); Ctrl-C to stop",
            address=address,
            pid=os.getpid(),
        )

    @server.on("connect")
    def _connect(conn: IPCConnection, payload: Any) -> None:
        pid, uid = _peer(conn)
        log(
            "connect",
            f"{conn.id} pid={pid} uid={uid} payload={to_json(payload)}",
            id=conn.id,
            pid=pid,
            uid=uid,
            payload=payload,
        )

    @server.on("disconnect")
    def _disconnect(conn: IPCConnection, reason: Any) -> None:
        log("disconnect", f"{conn.id} {reason}", id=conn.id, reason=str(reason))

    @server.on("error")
    def _error(error: BaseException, conn: IPCConnection | None) -> None:
        cid = conn.id if conn is not None else None
        log(
            "error",
            f"{cid or '-'} {type(error).__name__}: {error}",
            id=cid,
            type=type(error).__name__,
            error=str(error),
        )

    if quiet:
        return

    @server.on("message")
    def _message(data: Any, conn: IPCConnection) -> None:
        log("message", f"{conn.id} {to_json(data)}", id=conn.id, data=data)

    def pubsub(conn: IPCConnection, kind: str, named: Any, extra: Any) -> None:
        # (kind, topic or topics, message for "pub" / worker group for "sub" and "unsub")
        if kind == "pub":
            log(
                "publish",
                f"{conn.id} [{named}] {to_json(extra)}",
                id=conn.id,
                topic=named,
                data=extra,
            )
            return
        event = "subscribe" if kind == "sub" else "unsubscribe"
        topics = [named] if isinstance(named, str) else named
        group = "" if extra is None else f" group={extra}"
        log(event, f"{conn.id} {to_json(topics)}{group}", id=conn.id, topics=topics, group=extra)

    if isinstance(server, _ServeServer):
        server.on_pubsub = pubsub


async def _run_until_stopped(
    server: IPCServer, stop: asyncio.Event, log: _Log, allow_reconnect: bool
) -> None:
    try:
        await stop.wait()
    finally:
        count = len(server.connections)
        await server.close(allow_reconnect=allow_reconnect, timeout=5.0)
    log(
        "closed",
        f"closed gracefully ({count} client(s) told"
        + (", they may reconnect)" if allow_reconnect else ")"),
        clients=count,
        allow_reconnect=allow_reconnect,
    )


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    server = _make_server(args, _ServeServer)
    log = _Log(out)
    stop = asyncio.Event()
    _log_server_events(server, log, args.quiet)

    @server.on("request")
    def _request(data: Any, respond: Respond, conn: IPCConnection) -> None:
        if not args.quiet:
            log("request", f"{conn.id} {to_json(data)}", id=conn.id, data=data)
        respond(data)  # echo

    with stop_on_signals(stop.set):
        await _start(server)
        metrics = None
        if args.metrics_port is not None:
            metrics = _start_metrics(server, args.metrics_host, args.metrics_port, stop)
            log("metrics", f"Prometheus metrics at {metrics.url}", url=metrics.url)
        try:
            await _run_until_stopped(server, stop, log, args.allow_reconnect)
        finally:
            if metrics is not None:
                metrics.close()
    return EXIT_OK


def _start_metrics(server: IPCServer, host: str, port: int, stop: asyncio.Event) -> Any:
    from ..metrics import start_http_server

    try:
        return start_http_server(server, port, host=host)
    except ImportError as exc:
        stop.set()
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        stop.set()
        raise CommandError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------- reply


class _Answerer:
    """How ``reply`` answers: echo, a fixed value, or a command's stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.command: str | None = args.command
        self.string: bool = args.string
        self.timeout = no_limit(args.timeout)
        self.slots = asyncio.Semaphore(args.jobs)
        self.fixed = False
        self.value: Any = None
        if args.data is not None:
            self.fixed = True
            if args.data == STDIN:
                self.value = read_all(string=args.string)
            else:
                self.value = parse_data(args.data, string=args.string)

    async def answer(self, request: Any, conn: IPCConnection) -> Any:
        """The answer to ``request``; raises ``RuntimeError`` (sent as a RemoteError) on failure."""
        if self.command is None:
            return self.value if self.fixed else request
        async with self.slots:
            return await self._run(request, conn)

    async def _run(self, request: Any, conn: IPCConnection) -> Any:
        assert self.command is not None
        env = dict(os.environ, IPC_CONNECTION_ID=conn.id)
        pid, _ = _peer(conn)
        if pid is not None:
            env["IPC_PEER_PID"] = str(pid)
        proc = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=sys.platform != "win32",
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                _communicate(proc, (to_json(request) + "\n").encode()), self.timeout
            )
        except (asyncio.TimeoutError, TimeoutError):
            _kill(proc)
            await proc.wait()
            raise RuntimeError(
                f"the command did not finish within --timeout {self.timeout:g} s"
            ) from None
        finally:
            if proc.returncode is None:  # cancelled: the server is closing
                _kill(proc)
        if proc.returncode != 0:
            lines = stderr.decode(errors="replace").strip().splitlines()
            said = f": {lines[-1]}" if lines else ""
            raise RuntimeError(f"the command exited with code {proc.returncode}{said}")
        text = stdout.decode(errors="replace")
        if self.string:
            return text[:-1] if text.endswith("\n") else text
        if not text.strip():
            return None
        try:
            return parse_data(text, what="the command's output")
        except CommandError as exc:
            raise RuntimeError(str(exc).replace("send text", "answer text")) from None


async def _communicate(proc: asyncio.subprocess.Process, data: bytes) -> tuple[bytes, bytes]:
    """Like ``communicate``, also when the command exits without reading its stdin.

    (uvloop raises ``RuntimeError`` writing to the closed pipe, asyncio ``BrokenPipeError``.)
    """
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None

    async def feed(stdin: asyncio.StreamWriter) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            stdin.write(data)
            await stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            stdin.close()

    _, stdout, stderr = await asyncio.gather(
        feed(proc.stdin), proc.stdout.read(), proc.stderr.read()
    )
    await proc.wait()
    return stdout, stderr


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill a command and what it started (its own session on POSIX)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform != "win32":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


async def cmd_reply(args: argparse.Namespace, out: Output) -> int:
    if args.command is not None and (args.echo or args.data is not None):
        raise CommandError("give one of --echo, --command or DATA", EXIT_USAGE)
    if args.echo and args.data is not None:
        raise CommandError("give one of --echo, --command or DATA", EXIT_USAGE)
    answerer = _Answerer(args)
    server = _make_server(args)
    log = _Log(out)
    stop = asyncio.Event()
    started = 0
    answered = 0

    @server.on("ready")
    def _ready(address: str) -> None:
        how = (
            f"the stdout of {args.command!r}"
            if args.command is not None
            else ("a fixed value" if answerer.fixed else "the request itself (echo)")
        )
        log(
            "ready",
            f"answering requests on {address} with {how} (pid {os.getpid()}); Ctrl-C to stop",
            address=address,
            pid=os.getpid(),
        )

    @server.on("request")
    async def _request(data: Any, respond: Respond, conn: IPCConnection) -> None:
        nonlocal started, answered
        if args.count and started >= args.count:
            respond.fail(RuntimeError(f"this responder stops after {args.count} answer(s)"))
            return
        started += 1
        log("request", f"{conn.id} {to_json(data)}", id=conn.id, data=data)
        t0 = time.perf_counter()
        try:
            value = await answerer.answer(data, conn)
        except RuntimeError as exc:
            respond.fail(exc)
            log("failed", f"{conn.id} {exc}", id=conn.id, error=str(exc))
        else:
            ms = (time.perf_counter() - t0) * 1000.0
            try:
                await respond(value)
            except TypeError as exc:  # not encodable: a guard (parsed JSON always fits)
                respond.fail(exc)
                log("failed", f"{conn.id} {exc}", id=conn.id, error=str(exc))
            else:
                log(
                    "reply",
                    f"{conn.id} {to_json(value)} ({ms:.1f} ms)",
                    id=conn.id,
                    data=value,
                    ms=round(ms, 3),
                )
        answered += 1
        if args.count and answered >= args.count:
            stop.set()

    @server.on("error")
    def _error(error: BaseException, conn: IPCConnection | None) -> None:
        cid = conn.id if conn is not None else None
        log("error", f"{cid or '-'} {type(error).__name__}: {error}", id=cid, error=str(error))

    with stop_on_signals(stop.set):
        await _start(server)
        await _run_until_stopped(server, stop, log, False)
    return EXIT_OK
