"""``ipc-server top``: a live view of a running server, refreshed every second, like ``top``.

Each refresh asks the server for its stats (``IPCClient.server_stats``, with
every connection), computes the rates since the previous refresh, and draws
one frame: the server's totals, its rates, and its connections sorted by
activity. On a terminal the frame is redrawn in place with plain ANSI
sequences (the alternate screen, cursor home, erase line; no curses), keys
are read without echo, and ``q`` or Ctrl-C quits. When stdout is not a
terminal, each refresh is a JSON line (``--format text``: a plain frame), as
``top -b`` does; ``--count`` stops after that many refreshes.

``Rates`` and ``frame`` are pure (stats in, lines out), so that tests and the
screenshot in the docs draw exactly what a terminal shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from .output import EXIT_OK, Output, clock, isatty, timestamp
from .session import connect, make_client, no_limit, shut, stop_on_signals
from .stats import count, duration, fetch_stats, size

__all__ = ("Rates", "cmd_top", "frame")

_KEYS_QUIT = frozenset("qQ")
_BOLD, _REVERSE, _RESET = "\x1b[1m", "\x1b[7m", "\x1b[0m"


# ---------------------------------------------------------------------- rates


@dataclass
class Rates:
    """Rates between two refreshes: packets and bytes per second, in total and per connection."""

    at: float | None = None
    totals: dict[str, float] = field(default_factory=dict)
    per: dict[str, float] = field(default_factory=dict)
    """Packets per second (in + out) of each connection id."""
    _last: dict[str, Any] = field(default_factory=dict)

    def update(self, stats: dict[str, Any], now: float) -> None:
        """Take a new sample: the rates are from the previous one to this one."""
        last = self._last
        seconds = None if self.at is None else now - self.at
        keys = ("packets_in", "packets_out", "bytes_in", "bytes_out")
        if seconds is not None and seconds > 0:
            self.totals = {k: max(0.0, (stats[k] - last["totals"][k]) / seconds) for k in keys}
            before = last["per"]
            self.per = {}
            for conn in stats.get("per_connection", ()):
                packets = conn["packets_in"] + conn["packets_out"]
                self.per[conn["id"]] = max(0.0, (packets - before.get(conn["id"], 0)) / seconds)
        self.at = now
        self._last = {
            "totals": {k: stats[k] for k in keys},
            "per": {
                c["id"]: c["packets_in"] + c["packets_out"] for c in stats.get("per_connection", ())
            },
        }

    @property
    def ready(self) -> bool:
        """Whether there were two samples (the first frame has no rates yet)."""
        return bool(self.totals)


# ---------------------------------------------------------------------- one frame


def _rate(value: float) -> str:
    """A rate in at most 6 characters: ``0.5``, ``42``, ``3690``, ``12.3k``."""
    if value < 9.95:  # what rounds to 10.0 shows as 10
        return f"{value:.1f}"
    if value < 10_000:
        return f"{value:.0f}"
    return count(value)


def _short_size(n: float) -> str:
    """Bytes in at most 6 characters: ``999B``, ``12.3K``, ``4.56M``."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# (header, width, priority: lower stays longer when the terminal is narrow, cell)
_Column = tuple[str, int, int, Callable[[dict[str, Any], float | None], str]]
_COLUMNS: list[_Column] = [
    ("ID", -16, 0, lambda c, r: str(c["id"])[:16]),
    ("PID", 7, 1, lambda c, r: "-" if c["pid"] is None else str(c["pid"])),
    ("UID", 5, 4, lambda c, r: "-" if c["uid"] is None else str(c["uid"])),
    ("TOPICS", 6, 2, lambda c, r: str(c["topics"])),
    ("PKT-IN", 6, 3, lambda c, r: count(c["packets_in"])),
    ("PKT-OUT", 7, 3, lambda c, r: count(c["packets_out"])),
    ("B-IN", 6, 3, lambda c, r: _short_size(c["bytes_in"])),
    ("B-OUT", 6, 3, lambda c, r: _short_size(c["bytes_out"])),
    ("QUEUED", 6, 1, lambda c, r: _short_size(c["queued"])),
    ("PKT/S", 6, 0, lambda c, r: "-" if r is None else _rate(r)),
    ("AGE", 8, 5, lambda c, r: duration(c["connected_for"])),
]


def _fit(columns: list[_Column], width: int) -> list[_Column]:
    """The columns that fit in ``width``, dropping the least useful first."""
    kept = list(columns)
    while len(kept) > 1 and sum(abs(c[1]) for c in kept) + len(kept) - 1 > width:
        kept.remove(max(kept, key=lambda c: (c[2], columns.index(c))))
    return kept


def _cell(text: str, width: int) -> str:
    text = text[: abs(width)]
    return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def _traffic(stats: dict[str, Any], rates: Rates) -> list[str]:
    """Three aligned lines: packets and bytes, per second (since the last refresh) and in all."""
    t = rates.totals if rates.ready else None

    def row(
        label: str, unit: str, fast: Callable[[float], str], total: Callable[[int], str]
    ) -> str:
        per_s = ["-", "-"] if t is None else [fast(t[f"{unit}_in"]), fast(t[f"{unit}_out"])]
        all_ = [total(stats[f"{unit}_in"]), total(stats[f"{unit}_out"])]
        return f"{label:<11}" + "".join(f"{cell:>12}" for cell in [*per_s, *all_])

    header = f"{'':<11}" + "".join(f"{h:>12}" for h in ("in/s", "out/s", "total in", "total out"))
    return [
        header,
        row("Packets", "packets", _rate, lambda n: f"{n:,}"),
        row("Bytes", "bytes", size, size),
    ]


def frame(
    stats: dict[str, Any],
    rates: Rates,
    *,
    width: int = 80,
    height: int = 24,
    own: str | None = None,
    styled: bool = False,
    now: _dt.datetime | None = None,
    interval: float = 1.0,
    pad: bool = True,
) -> list[str]:
    """The lines of one frame (at most ``height``, each at most ``width`` characters of text).

    ``own`` is this view's own connection id (marked ``*``); ``styled`` adds
    bold and reverse video (ANSI SGR), which take no room on the screen;
    ``pad`` fills the screen's height, so that the footer is its last line.
    """
    bold, reverse, reset = (_BOLD, _REVERSE, _RESET) if styled else ("", "", "")
    refused = sum(stats["refused"].values())
    errors = sum(stats["errors"].values())
    head = [
        f"ipc-server top - {clock(now)[:8]}  up {duration(stats['uptime'])},  "
        f"{stats['address']}  (pid {stats['pid']})",
        f"Connections: {stats['connections']} admitted, {stats['handshaking']} handshaking"
        f"   Topics: {stats['topics']} ({stats['subscriptions']} subscriptions)",
        *_traffic(stats, rates),
        f"Queued: {size(stats['queued'])}   Handlers: {stats['handlers']}   "
        f"Pending: {stats['pending']}   Refused: {refused}   Errors: {errors}",
    ]
    lines = [bold + head[0][:width] + reset, *(line[:width] for line in head[1:]), ""]
    columns = _fit(_COLUMNS, width)
    header = " ".join(_cell(c[0], c[1]) for c in columns)
    lines.append(reverse + (header.ljust(width) if styled else header)[:width] + reset)
    per = list(stats.get("per_connection", ()))
    per.sort(
        key=lambda c: (
            -rates.per.get(c["id"], 0.0),
            -(c["bytes_in"] + c["bytes_out"]),
            -(c["packets_in"] + c["packets_out"]),
        )
    )
    room = max(0, height - len(lines) - 1)
    shown = per if len(per) <= room else per[: max(0, room - 1)]
    for conn in shown:
        rate = rates.per.get(conn["id"]) if rates.ready else None
        cells = [_cell(c[3](conn, rate), c[1]) for c in columns]
        if conn["id"] == own:
            cells[0] = _cell(str(conn["id"])[:15] + "*", columns[0][1])
        lines.append(" ".join(cells)[:width])
    if len(shown) < len(per):
        lines.append(f"... and {len(per) - len(shown)} more connection(s)"[:width])
    footer = f"q: quit   every {interval:g} s   * this view"
    if own is None:
        footer = f"q: quit   every {interval:g} s"
    while pad and len(lines) < height - 1:
        lines.append("")
    lines.append(footer[:width])
    return lines[:height]


# ---------------------------------------------------------------------- the terminal


class Screen:
    """A terminal drawn in place: the alternate screen, no cursor, keys without echo."""

    def __init__(self, stream: TextIO, keys: TextIO) -> None:
        self.stream = stream
        self.keys = keys
        self._saved: Any = None

    def __enter__(self) -> Screen:
        if sys.platform != "win32" and isatty(self.keys):
            import termios
            import tty

            fd = self.keys.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys one by one, no echo; Ctrl-C still sends SIGINT
        self.stream.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
        self.stream.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.write("\x1b[0m\x1b[?25h\x1b[?1049l")
        self.stream.flush()
        if self._saved is not None and sys.platform != "win32":
            import termios

            termios.tcsetattr(self.keys.fileno(), termios.TCSADRAIN, self._saved)

    def size(self) -> tuple[int, int]:
        """Columns and lines of the terminal."""
        columns, lines = shutil.get_terminal_size((80, 24))
        return max(20, columns), max(5, lines)

    def draw(self, lines: list[str]) -> None:
        """Replace the screen with ``lines`` (the last one without a line end: no scrolling)."""
        body = "\r\n".join("\x1b[2K" + line for line in lines)
        self.stream.write("\x1b[H" + body + "\x1b[J")
        self.stream.flush()


@contextlib.contextmanager
def _on_keys(keys: TextIO, quit: Callable[[], None]) -> Iterator[None]:
    """Call ``quit`` when ``q`` is typed (stdin a terminal; polled on Windows)."""
    loop = asyncio.get_running_loop()
    if not isatty(keys):
        yield
        return
    if sys.platform == "win32":  # pragma: no cover - no add_reader for a console
        import msvcrt

        async def poll() -> None:
            while True:
                while msvcrt.kbhit():
                    if msvcrt.getwch() in _KEYS_QUIT:
                        quit()
                await asyncio.sleep(0.1)

        task = loop.create_task(poll())
        try:
            yield
        finally:
            task.cancel()
        return
    fd = keys.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 64).decode(errors="replace")
        except OSError:
            data = "q"  # the terminal is gone
        if not data or _KEYS_QUIT.intersection(data):
            quit()

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


@contextlib.contextmanager
def _on_resize(redraw: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    sig = getattr(signal, "SIGWINCH", None)
    if sig is None:  # pragma: no cover - Windows
        yield
        return
    try:
        loop.add_signal_handler(sig, redraw)
    except (NotImplementedError, RuntimeError):  # pragma: no cover
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(sig)


# ---------------------------------------------------------------------- the command


def _sample(stats: dict[str, Any], rates: Rates) -> dict[str, Any]:
    """One refresh as a JSON line: the stats, the rates, each connection's packets/s."""
    per = [
        {**conn, "packets_per_s": round(rates.per.get(conn["id"], 0.0), 3)}
        for conn in stats.get("per_connection", ())
    ]
    totals = {f"{k}_per_s": round(v, 3) for k, v in rates.totals.items()}
    return {**stats, "per_connection": per, "rates": totals or None}


async def cmd_top(args: argparse.Namespace, out: Output) -> int:
    live = not out.json and isatty(out.stream) and args.format != "text"
    client = make_client(args)
    stop = asyncio.Event()
    wake = asyncio.Event()
    rates = Rates()
    refreshes = 0

    def quit() -> None:
        stop.set()
        wake.set()

    with stop_on_signals(quit):
        try:
            await connect(client, args)
            screen = Screen(out.stream, sys.stdin) if live else None
            with (
                screen if screen is not None else contextlib.nullcontext(),
                _on_keys(sys.stdin, quit) if live else contextlib.nullcontext(),
                _on_resize(wake.set) if live else contextlib.nullcontext(),
            ):
                last: dict[str, Any] | None = None
                next_at = time.monotonic()
                while not stop.is_set():
                    if time.monotonic() >= next_at:
                        last = await fetch_stats(client, True, no_limit(args.timeout))
                        rates.update(last, time.monotonic())
                        refreshes += 1
                        next_at = time.monotonic() + args.interval
                    assert last is not None
                    if screen is not None:
                        width, height = screen.size()
                        screen.draw(
                            frame(
                                last,
                                rates,
                                width=width,
                                height=height,
                                own=client.id,
                                styled=True,
                                interval=args.interval,
                            )
                        )
                    elif out.json:
                        out.emit("top", "", time=timestamp(), **_sample(last, rates))
                    else:
                        lines = frame(
                            last, rates, width=100, height=10_000, own=client.id, pad=False
                        )
                        out.stream.write("\n".join(lines) + "\n\n")
                        out.stream.flush()
                    if args.count and refreshes >= args.count:
                        break
                    wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(0.0, next_at - time.monotonic()))
        finally:
            await shut(client)
    return EXIT_OK
