"""What the commands that connect or listen share: the address, the client, signals.

``address_kwargs`` reads ``--path`` / ``--host`` / ``--port``; ``make_client``,
``connect`` and ``shut`` open and close a client the way every client command
does; ``stop_on_signals`` turns SIGINT / SIGTERM into a call in the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from ..client import IPCClient
from ..errors import HandshakeError, IPCError
from .data import parse_data
from .output import EXIT_USAGE, CommandError

__all__ = ("address_kwargs", "connect", "make_client", "no_limit", "shut", "stop_on_signals")


def address_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The address options of the library from ``--path`` / ``--host`` / ``--port``."""
    if args.path is not None and (args.host is not None or args.port is not None):
        raise CommandError("give either --path or --host/--port, not both", EXIT_USAGE)
    if args.host is not None and args.port is None:
        raise CommandError("--host needs --port", EXIT_USAGE)
    if args.port is not None:
        return {"host": args.host or "127.0.0.1", "port": args.port}
    return {"path": args.path}


def no_limit(value: float) -> float | None:
    """The CLI's 0 means "no timeout", as None does in the library."""
    return value or None


@contextlib.contextmanager
def stop_on_signals(callback: Callable[[], None]) -> Iterator[None]:
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


def make_client(args: argparse.Namespace, *, reconnect: bool = False) -> IPCClient:
    """The client of a client command, from its address and connection options."""
    timeout = getattr(args, "timeout", 0.0) or 10.0
    try:
        return IPCClient(
            **address_kwargs(args),
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


async def connect(client: IPCClient, args: argparse.Namespace) -> None:
    """Connect with ``--payload``; the library's errors already name the address."""
    payload = None if args.payload is None else parse_data(args.payload, what="--payload")
    try:
        await client.connect(payload)
    except HandshakeError as exc:
        text = str(exc)
        if str(client.address) in text:  # not an IPC server, or not the expected uid
            raise CommandError(text) from exc
        raise CommandError(
            f"the server at {client.address} refused the connection: {text}"
        ) from exc
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
        # A peer that is not an IPC server may answer garbage and hang up.
        raise CommandError(
            f"{client.address} closed the connection during the handshake "
            f"({exc.strerror or exc}): not an IPC server, or one that refused this client"
        ) from exc


async def shut(client: IPCClient) -> None:
    """Close gracefully when connected (queued sends are flushed); never wait long."""
    if client.is_ready:
        try:
            await client.close("done", timeout=2.0)
        except IPCError:
            client.destroy("done")
    else:
        client.destroy("done")
