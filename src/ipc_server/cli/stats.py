"""``ipc-server stats``: what a running server holds and has carried, asked once.

The server answers the built-in stats request (``IPCClient.server_stats``)
only to the peers its ``allow_stats`` option lets in: by default peers of its
own uid over a Unix socket. JSON (one object, ``"event": "stats"``) when
stdout is not a terminal, readable text on one. The number formats here are
shared with ``top``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..client import IPCClient
from ..errors import IPCError, RemoteError
from .output import EXIT_OK, CommandError, Output
from .session import connect, make_client, no_limit, shut

__all__ = ("cmd_stats", "count", "duration", "fetch_stats", "size", "stats_text")


def size(n: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``12.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def count(n: float) -> str:
    """A count in at most 6 characters: ``999``, ``12.3k``, ``4.56M``."""
    value = float(n)
    if abs(value) < 10_000:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    for unit in ("k", "M", "G", "T"):
        value /= 1000
        if abs(value) < 1000 or unit == "T":
            return f"{value:.3g}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def duration(seconds: float | None) -> str:
    """A duration like ``top``'s uptime: ``42 s``, ``3:05``, ``2:03:05``, ``4d 02:03``."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{seconds:.0f} s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


async def fetch_stats(
    client: IPCClient, connections: bool, timeout: float | None
) -> dict[str, Any]:
    """The server's ``stats()``, with the refusals worded for the command line."""
    try:
        return await client.server_stats(connections=connections, timeout=timeout)
    except RemoteError as exc:
        if exc.type != "PermissionError":
            raise
        raise CommandError(
            f"the server at {client.address} does not show its stats to this peer: by default "
            "only to its own user over a Unix socket (its allow_stats option; "
            "ipc-server serve --allow-stats lets everyone in)"
        ) from exc
    except IPCError as exc:
        if exc.__class__ is IPCError:  # the server does not know the stats request
            raise CommandError(str(exc)) from exc
        raise


def _by_key(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items())) or "none"


def stats_text(stats: dict[str, Any]) -> str:
    """The readable form of a server's stats (a table of connections when they are in it)."""
    rows = [
        ("server", f"{stats['address']} (pid {stats['pid']}), up {duration(stats['uptime'])}"),
        ("connections", f"{stats['connections']} ({stats['handshaking']} handshaking)"),
        ("topics", f"{stats['topics']} ({stats['subscriptions']} subscriptions)"),
        (
            "handlers",
            f"{stats['handlers']} running; {stats['pending']} requests of its own pending",
        ),
        ("queued", size(stats["queued"])),
        ("packets", f"in {stats['packets_in']:,}  out {stats['packets_out']:,}"),
        ("bytes", f"in {size(stats['bytes_in'])}  out {size(stats['bytes_out'])}"),
        ("refused", _by_key(stats["refused"])),
        ("errors", _by_key(stats["errors"])),
    ]
    lines = [f"{name:<12} {value}" for name, value in rows]
    per = stats.get("per_connection")
    if per is not None:
        lines.append("")
        header = (
            f"{'ID':<16} {'PID':>7} {'UID':>6} {'TOPICS':>6} {'PKT IN':>7} {'PKT OUT':>7} "
            f"{'BYTES IN':>9} {'BYTES OUT':>9} {'QUEUED':>9} {'AGE':>8}"
        )
        lines.append(header)
        lines.extend(_connection_row(conn) for conn in per)
    return "\n".join(lines)


def _connection_row(conn: dict[str, Any]) -> str:
    pid = "-" if conn["pid"] is None else conn["pid"]
    uid = "-" if conn["uid"] is None else conn["uid"]
    return (
        f"{str(conn['id'])[:16]:<16} {pid:>7} {uid:>6} {conn['topics']:>6} "
        f"{count(conn['packets_in']):>7} {count(conn['packets_out']):>7} "
        f"{size(conn['bytes_in']):>9} {size(conn['bytes_out']):>9} "
        f"{size(conn['queued']):>9} {duration(conn['connected_for']):>8}"
    )


async def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args)
    try:
        await connect(client, args)
        stats = await fetch_stats(client, args.connections, no_limit(args.timeout))
    finally:
        await shut(client)
    out.emit("stats", stats_text(stats), **stats)
    return EXIT_OK
