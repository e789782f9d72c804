"""The commands that talk to a server: send, request, ping, publish, subscribe.

Each ``cmd_*`` takes the parsed arguments and an :class:`Output` and returns
an exit code (or raises :class:`CommandError`). A data argument is JSON, or
text with ``--string``; ``-`` reads it from stdin (``ipc_server.cli.data``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from .data import STDIN, parse_data, read_all, read_lines
from .output import EXIT_OK, EXIT_TIMEOUT, CommandError, Output, to_json
from .session import connect, make_client, no_limit, shut, stop_on_signals

__all__ = (
    "cmd_ping",
    "cmd_publish",
    "cmd_request",
    "cmd_send",
    "cmd_subscribe",
)


def _one_value(args: argparse.Namespace) -> Any:
    """The data argument of ``request``: JSON, text with --string, all of stdin for ``-``."""
    if args.data == STDIN:
        return read_all(string=args.string)
    return parse_data(args.data, string=args.string)


async def _values(args: argparse.Namespace, first: Any) -> AsyncIterator[Any]:
    """The data of ``send`` / ``publish``: ``first`` (the parsed argument), or each line of stdin."""
    if args.data != STDIN:
        yield first
        return
    async for value in read_lines(string=args.string):
        yield value


def _argument(args: argparse.Namespace) -> Any:
    """The data argument parsed (before connecting: bad data fails first); None for ``-``."""
    return None if args.data == STDIN else parse_data(args.data, string=args.string)


# ---------------------------------------------------------------------- client commands


async def cmd_send(args: argparse.Namespace, out: Output) -> int:
    first = _argument(args)
    client = make_client(args)
    try:
        await connect(client, args)
        async for value in _values(args, first):
            await client.send(value)
            out.emit("sent", f"sent {to_json(value)}", data=value)
    finally:
        await shut(client)
    return EXIT_OK


async def cmd_request(args: argparse.Namespace, out: Output) -> int:
    data = _one_value(args)
    client = make_client(args)
    try:
        await connect(client, args)
        started = time.perf_counter()
        reply = await client.request(data, timeout=no_limit(args.timeout))
        ms = (time.perf_counter() - started) * 1000.0
    finally:
        await shut(client)
    out.emit("reply", f"reply in {ms:.3f} ms: {to_json(reply)}", data=reply, ms=round(ms, 3))
    return EXIT_OK


async def cmd_ping(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args)
    stop = asyncio.Event()
    times: list[float] = []
    try:
        await connect(client, args)
        with stop_on_signals(stop.set):
            seq = 0
            while not stop.is_set() and (args.count == 0 or seq < args.count):
                seq += 1
                ms = await client.ping(timeout=no_limit(args.timeout)) * 1000.0
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
    first = _argument(args)
    client = make_client(args)
    try:
        await connect(client, args)
        async for value in _values(args, first):
            if not await client.publish(args.topic, value):
                raise CommandError(f"the server refused to publish to {args.topic!r}")
            out.emit(
                "published",
                f"published to {args.topic}: {to_json(value)}",
                topic=args.topic,
                data=value,
            )
    finally:
        await shut(client)
    return EXIT_OK


async def cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args, reconnect=True)
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
    with stop_on_signals(lambda: queue.put_nowait(("stop", None, None))):
        try:
            await connect(client, args)
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
