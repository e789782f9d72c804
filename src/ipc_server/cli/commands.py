"""The commands that talk to a server or run one: send, request, ping, publish, subscribe, serve.

Each ``cmd_*`` takes the parsed arguments and an :class:`Output` and returns
an exit code (or raises :class:`CommandError`); ``shut`` closes a client the
way every command does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..client import IPCClient
from ..errors import AddressInUseError, HandshakeError, IPCError
from ..server import IPCConnection, IPCServer
from .output import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CommandError, Output, clock, to_json

__all__ = (
    "cmd_ping",
    "cmd_publish",
    "cmd_request",
    "cmd_send",
    "cmd_serve",
    "cmd_subscribe",
    "shut",
)


# ---------------------------------------------------------------------- what the arguments mean


def _address_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.path is not None and (args.host is not None or args.port is not None):
        raise CommandError("give either --path or --host/--port, not both", EXIT_USAGE)
    if args.host is not None and args.port is None:
        raise CommandError("--host needs --port", EXIT_USAGE)
    if args.port is not None:
        return {"host": args.host or "127.0.0.1", "port": args.port}
    return {"path": args.path}


def _timeout(value: float) -> float | None:
    """The CLI's 0 means "no timeout", as in the library."""
    return value or None


# ---------------------------------------------------------------------- signals


@contextlib.contextmanager
def _stop_on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` (in the loop) on SIGINT / SIGTERM while inside the block."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    sigs = [signal.SIGINT]
    if hasattr(signal, "SIGTERM"):
        sigs.append(signal.SIGTERM)
    for sig in sigs:
        try:
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows: no add_signal_handler
            previous[sig] = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(callback))
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------- client commands


def _make_client(args: argparse.Namespace, *, reconnect: bool = False) -> IPCClient:
    timeout = getattr(args, "timeout", 0.0) or 10.0
    try:
        return IPCClient(
            **_address_kwargs(args),
            codec=args.codec,
            compress=args.compress,
            reconnect=reconnect,
            retries=10 if reconnect else 0,
            max_retry_time=5.0,
            connect_timeout=min(timeout, 10.0),
            request_timeout=timeout,
        )
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc


async def _connect(client: IPCClient, args: argparse.Namespace) -> None:
    try:
        await client.connect(args.payload)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise CommandError(f"no server listening at {client.address} ({exc.strerror})") from exc
    except HandshakeError as exc:
        raise CommandError(f"the server at {client.address} refused the connection: {exc}") from exc


async def shut(client: IPCClient) -> None:
    """Close gracefully when connected (queued sends are flushed); never wait long."""
    if client.is_ready:
        try:
            await client.close("done", timeout=2.0)
        except IPCError:
            client.destroy("done")
    else:
        client.destroy("done")


async def cmd_send(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        await client.send(args.data)
    finally:
        await shut(client)
    out.emit("sent", f"sent {to_json(args.data)}", data=args.data)
    return EXIT_OK


async def cmd_request(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        started = time.perf_counter()
        reply = await client.request(args.data, timeout=_timeout(args.timeout))
        ms = (time.perf_counter() - started) * 1000.0
    finally:
        await shut(client)
    out.emit("reply", f"reply in {ms:.3f} ms: {to_json(reply)}", data=reply, ms=round(ms, 3))
    return EXIT_OK


async def cmd_ping(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    stop = asyncio.Event()
    times: list[float] = []
    try:
        await _connect(client, args)
        with _stop_on_signals(stop.set):
            seq = 0
            while not stop.is_set() and (args.count == 0 or seq < args.count):
                seq += 1
                ms = await client.ping(timeout=_timeout(args.timeout)) * 1000.0
                times.append(ms)
                out.emit(
                    "pong",
                    f"pong from {client.address}: seq={seq} time={ms:.3f} ms",
                    seq=seq,
                    ms=round(ms, 3),
                )
                if args.interval > 0 and (args.count == 0 or seq < args.count):
                    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                        await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        await shut(client)
    if times:
        low, avg, high = min(times), statistics.fmean(times), max(times)
        out.emit(
            "summary",
            f"{len(times)} pings, min/avg/max = {low:.3f}/{avg:.3f}/{high:.3f} ms",
            count=len(times),
            min_ms=round(low, 3),
            avg_ms=round(avg, 3),
            max_ms=round(high, 3),
        )
    return EXIT_OK


async def cmd_publish(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        ok = await client.publish(args.topic, args.data)
    finally:
        await shut(client)
    if not ok:
        raise CommandError(f"the server refused to publish to {args.topic!r}")
    out.emit(
        "published",
        f"published to {args.topic}: {to_json(args.data)}",
        topic=args.topic,
        data=args.data,
    )
    return EXIT_OK


async def cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args, reconnect=True)
    # One queue for everything that can end or feed the loop, so it is one wait.
    queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
    closed: list[Any] = []
    # Published messages are emitted under their topic's name, so a topic may be
    # called "close" or "message": tell them apart by the client's status, and
    # take topic messages from subscription() iterators, never from on(topic).
    if "message" not in args.topics:
        client.on("message", lambda m: queue.put_nowait(("broadcast", None, m)))
    client.on("close", lambda reason: closed.append(reason) if not client.is_ready else None)
    topics = list(dict.fromkeys(args.topics))
    loop = asyncio.get_running_loop()
    # Signals count from the start: a SIGINT right after "subscribed" still ends cleanly.
    with _stop_on_signals(lambda: queue.put_nowait(("stop", None, None))):
        try:
            await _connect(client, args)
            async with contextlib.AsyncExitStack() as stack:
                # subscription() rather than on(topic): a topic may be named like an event.
                for topic in topics:
                    sub = await stack.enter_async_context(client.subscription(topic))
                    forward = loop.create_task(_forward(sub, topic, queue, closed))
                    stack.push_async_callback(_cancel, forward)
                out.emit(
                    "subscribed",
                    f"subscribed to {', '.join(topics)} on {client.address}",
                    topics=topics,
                )
                await _print_messages(args, out, queue)
        finally:
            await shut(client)
    return EXIT_OK


async def _print_messages(
    args: argparse.Namespace, out: Output, queue: asyncio.Queue[tuple[str, Any, Any]]
) -> None:
    """Print what arrives until --count messages, a signal, the end of the client, or --timeout."""
    loop = asyncio.get_running_loop()
    deadline = None if not args.timeout else loop.time() + args.timeout
    seen = 0
    while args.count == 0 or seen < args.count:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            kind, topic, data = await asyncio.wait_for(queue.get(), remaining)
        except (asyncio.TimeoutError, TimeoutError):
            raise CommandError(
                f"timed out after {args.timeout:g} s with {seen} of {args.count or 'unlimited'} "
                "messages",
                EXIT_TIMEOUT,
            ) from None
        if kind == "stop":
            return
        if kind == "close":
            raise CommandError(f"connection closed: {data}")
        if kind == "message":
            seen += 1
        out.emit(
            "message",
            f"[{topic if topic is not None else 'broadcast'}] {to_json(data)}",
            topic=topic,
            data=data,
        )


async def _forward(
    sub: Any, topic: str, queue: asyncio.Queue[tuple[str, Any, Any]], closed: list[Any]
) -> None:
    async for message in sub:
        queue.put_nowait(("message", topic, message))
    # The iterator ends when the client closed for good.
    queue.put_nowait(("close", None, closed[0] if closed else "closed"))


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------------- serve


def _make_server(args: argparse.Namespace) -> IPCServer:
    try:
        return IPCServer(
            **_address_kwargs(args),
            codec=args.codec,
            compress=not args.no_compress,
            socket_mode=args.socket_mode,
        )
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc


def _peer_pid(conn: IPCConnection) -> int | None:
    return conn.peer.pid if conn.peer is not None else None


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    server = _make_server(args)
    stop = asyncio.Event()

    def log(event: str, text: str, **fields: Any) -> None:
        out.emit(event, f"{clock()}  {event:<10}  {text}", **fields)

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
        pid = _peer_pid(conn)
        log(
            "connect",
            f"{conn.id} pid={pid} payload={to_json(payload)}",
            id=conn.id,
            pid=pid,
            payload=payload,
        )

    @server.on("disconnect")
    def _disconnect(conn: IPCConnection, reason: Any) -> None:
        log("disconnect", f"{conn.id} {reason}", id=conn.id, reason=str(reason))

    @server.on("error")
    def _error(error: BaseException, conn: IPCConnection | None) -> None:
        cid = conn.id if conn is not None else None
        log("error", f"{cid or '-'} {type(error).__name__}: {error}", id=cid, error=str(error))

    @server.on("message")
    def _message(data: Any, conn: IPCConnection) -> None:
        if not args.quiet:
            log("message", f"{conn.id} {to_json(data)}", id=conn.id, data=data)

    @server.on("request")
    def _request(data: Any, respond: Any, conn: IPCConnection) -> None:
        if not args.quiet:
            log("request", f"{conn.id} {to_json(data)}", id=conn.id, data=data)
        respond(data)  # echo

    with _stop_on_signals(stop.set):
        try:
            await server.start()
        except AddressInUseError as exc:
            raise CommandError(f"{exc.strerror}") from exc
        try:
            await stop.wait()
        finally:
            count = len(server.connections)
            await server.close(allow_reconnect=args.allow_reconnect, timeout=5.0)
    log(
        "closed",
        f"closed gracefully ({count} client(s) told"
        + (", they may reconnect)" if args.allow_reconnect else ")"),
        clients=count,
        allow_reconnect=args.allow_reconnect,
    )
    return EXIT_OK
