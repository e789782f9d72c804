"""`ipc-server stats` and `ipc-server top`: run for real, `top` also on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from clikit import Running, Terminal, events, one_error_line, run, run_async
from ipc_server import IPCClient, IPCServer
from ipc_server.cli.top import Rates, frame

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets and a pty")


@pytest.fixture
def path() -> Iterator[str]:
    """A socket path in a short folder under /tmp."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield os.path.join(folder, "s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def served(path: str) -> Iterator[Running]:
    """`ipc-server serve` on ``path``, ready."""
    server = Running("serve", "--path", path, "--quiet")
    try:
        server.wait_for("ready")
        yield server
    finally:
        server.kill()


@pytest.fixture
async def busy(path: str) -> AsyncIterator[IPCServer]:
    """An in-test server with two clients: one subscribed to two topics, one making requests."""
    server = IPCServer(path=path)
    server.on("request", lambda request, respond, connection: respond(request))
    await server.start()
    quiet = await IPCClient(path=path).connect()
    await quiet.subscribe(["news", "sport"])
    chatty = await IPCClient(path=path).connect()
    stop = asyncio.Event()

    async def chat() -> None:
        while not stop.is_set():
            await chatty.request({"pad": "x" * 100})
            await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(chat())
    try:
        yield server
    finally:
        stop.set()
        await task
        await quiet.close()
        await chatty.close()
        await server.close()


# ---------------------------------------------------------------------- stats


def test_stats_json_when_piped(served: Running, path: str) -> None:
    """`stats` prints one JSON object (the server's stats) when stdout is not a terminal."""
    result = run("stats", "--path", path)
    assert result.returncode == 0, result.stderr
    (line,) = events(result.stdout)
    assert line["event"] == "stats"
    assert line["address"] == path
    assert line["connections"] == 1  # this command's own
    assert line["packets_in"] >= 1
    assert "per_connection" not in line
    full = events(run("stats", "--path", path, "--connections").stdout)[0]
    assert len(full["per_connection"]) == 1


def test_stats_text(served: Running, path: str) -> None:
    """`stats --format text` reads as labelled lines, and a table with --connections."""
    result = run("stats", "--path", path, "--format", "text", "--connections")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(rf"^server +{re.escape(path)} \(pid \d+\), up ", out, re.M)
    assert re.search(r"^connections +1 \(0 handshaking\)$", out, re.M)
    assert re.search(r"^ID +PID +UID +TOPICS", out, re.M)
    assert "{" not in out


async def test_stats_refused_is_one_line(path: str) -> None:
    """A server whose allow_stats refuses: exit 1, one line saying why and what to do."""
    server = IPCServer(path=path, allow_stats=False)
    await server.start()
    try:
        code, out, err = await run_async("stats", "--path", path)
    finally:
        await server.close()
    assert code == 1
    assert out == ""
    line = one_error_line(err, "stats")
    assert f"the server at {path} does not show its stats to this peer" in line
    assert "allow_stats" in line


def test_stats_over_tcp_with_allow_stats(running_server: Any) -> None:
    """`serve --allow-stats` over TCP answers `stats --port`; without it, it refuses."""
    for allow, code in ((True, 0), (False, 1)):
        server = running_server("--host", "127.0.0.1", "--port", "0", *(["--allow-stats"] * allow))
        port = str(server.seen[-1]["address"]).rsplit(":", 1)[1]
        result = run("stats", "--port", port)
        assert result.returncode == code, result.stderr


@pytest.fixture
def running_server() -> Iterator[Any]:
    """Start `serve ARGS` (ready) as often as a test likes; all killed at its end."""
    procs: list[Running] = []

    def start(*args: str) -> Running:
        server = Running("serve", *args)
        procs.append(server)
        server.wait_for("ready")
        return server

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()


# ---------------------------------------------------------------------- top, piped


async def test_top_piped_prints_json_lines_with_rates(busy: IPCServer, path: str) -> None:
    """Piped, `top --count 3` prints three JSON lines; rates from the second, by connection."""
    code, out, err = await run_async("top", "--path", path, "--count", "3", "--interval", "0.2")
    assert code == 0, err
    lines = events(out)
    assert [line["event"] for line in lines] == ["top"] * 3
    assert lines[0]["rates"] is None
    rates = lines[2]["rates"]
    assert rates["packets_in_per_s"] > 10  # the chatty client
    assert rates["bytes_out_per_s"] > 0
    per = lines[2]["per_connection"]
    assert len(per) == 3
    assert max(per, key=lambda c: c["packets_per_s"])["topics"] == 0  # chatty, not the subscriber
    assert all("time" in line for line in lines)


async def test_top_text_when_not_a_terminal(busy: IPCServer, path: str) -> None:
    """`top --format text` piped prints plain frames, no escape sequences."""
    code, out, err = await run_async(
        "top", "--path", path, "--count", "2", "--interval", "0.1", "--format", "text"
    )
    assert code == 0, err
    assert "\x1b" not in out
    assert out.count("ipc-server top - ") == 2
    assert "Topics: 2 (2 subscriptions)" in out


# ---------------------------------------------------------------------- top on a terminal


def screen_text(output: bytes) -> str:
    """The last frame drawn, as text (escape sequences removed)."""
    last = output.rsplit(b"\x1b[H", 1)[-1].decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last).replace("\r", "")


@pytest.mark.parametrize("key", [b"q", b"\x03"])
async def test_top_on_a_terminal(busy: IPCServer, path: str, key: bytes) -> None:
    """On a pty `top` redraws in place every interval, shows rates and connections; q / Ctrl-C quit."""
    term = Terminal("top", "--path", path, "--interval", "0.2", columns=100, lines=30)
    try:

        def frames(output: bytes) -> int:
            return output.count(b"\x1b[J")

        await asyncio.to_thread(term.read_until, lambda out: frames(out) >= 4)
        out = term.output
        assert out.startswith(b"\x1b[?1049h")  # the alternate screen
        text = screen_text(out)
        rows = text.split("\n")
        assert len(rows) == 30
        assert all(len(row) <= 100 for row in rows)
        assert rows[0].startswith("ipc-server top - ")
        assert path in rows[0]
        assert "Connections: 3 admitted, 0 handshaking" in text
        assert "Topics: 2 (2 subscriptions)" in text
        header = next(row for row in rows if row.startswith("ID "))
        for column in ("PID", "UID", "TOPICS", "PKT-IN", "PKT-OUT", "B-IN", "B-OUT", "QUEUED"):
            assert column in header
        table = rows[rows.index(header) + 1 : rows.index(header) + 4]
        assert sum(row.split()[0].endswith("*") for row in table) == 1  # this view's own
        first_rate = float(table[0].split()[9])
        assert first_rate > 10  # the chatty client first
        assert rows[-1].startswith("q: quit")
        term.type(key)
        code = await asyncio.to_thread(term.wait)
        assert code == 0
        assert term.output.endswith(b"\x1b[?1049l")  # the screen is given back
    finally:
        term.close()


def test_top_on_a_terminal_with_no_server(path: str) -> None:
    """With no server, `top` on a terminal says so in one line and never draws."""
    term = Terminal("top", "--path", path)
    try:
        assert term.wait() == 1
        text = term.output.decode()
        assert "\x1b[?1049h" not in text
        assert text.strip().startswith("ipc-server top: error: no IPC server at")
    finally:
        term.close()


# ---------------------------------------------------------------------- frames and rates


def stats_with(per: list[dict[str, Any]], **totals: Any) -> dict[str, Any]:
    """A server's stats with the connections ``per``."""
    base: dict[str, Any] = {
        "address": "/tmp/x.sock",
        "pid": 42,
        "uptime": 3725.0,
        "connections": len(per),
        "handshaking": 0,
        "topics": 0,
        "subscriptions": 0,
        "handlers": 0,
        "pending": 0,
        "queued": 0,
        "packets_in": sum(c["packets_in"] for c in per),
        "packets_out": sum(c["packets_out"] for c in per),
        "bytes_in": 0,
        "bytes_out": 0,
        "refused": {},
        "errors": {},
        "per_connection": per,
    }
    base.update(totals)
    return base


def conn(cid: str, packets: int) -> dict[str, Any]:
    """One connection's stats."""
    return {
        "id": cid,
        "pid": 7,
        "uid": 1000,
        "connected_for": 61.0,
        "topics": 1,
        "packets_in": packets,
        "packets_out": packets,
        "bytes_in": packets * 100,
        "bytes_out": packets * 100,
        "queued": 0,
    }


def test_rates_between_refreshes() -> None:
    """Rates are the difference between two samples over the time between them, per connection."""
    rates = Rates()
    rates.update(stats_with([conn("a", 10), conn("b", 0)]), now=100.0)
    assert rates.totals == {}  # no rates from one sample
    rates.update(stats_with([conn("a", 30), conn("b", 5), conn("c", 1)]), now=102.0)
    assert rates.ready
    assert rates.totals["packets_in"] == pytest.approx((36 - 10) / 2)
    assert rates.per == {"a": 20.0, "b": 5.0, "c": 1.0}


def test_frame_sorts_by_activity_and_fits_the_terminal() -> None:
    """Connections are sorted by packets/s; a narrow terminal drops columns, never overflows."""
    rates = Rates()
    rates.update(stats_with([conn("slow", 0), conn("fast", 0)]), now=0.0)
    stats = stats_with([conn("slow", 1), conn("fast", 500)])
    rates.update(stats, now=1.0)
    lines = frame(stats, rates, width=100, height=20, own="slow")
    header = next(i for i, line in enumerate(lines) if line.startswith("ID "))
    assert lines[header + 1].startswith("fast")
    assert lines[header + 2].startswith("slow*")
    assert "1:02:05" in lines[0]  # the uptime
    narrow = frame(stats, rates, width=50, height=20)
    assert all(len(line) <= 50 for line in narrow)
    narrow_header = next(line for line in narrow if line.startswith("ID "))
    assert "PKT/S" in narrow_header
    assert "AGE" not in narrow_header


def test_frame_says_how_many_connections_it_could_not_show() -> None:
    """More connections than lines: the frame ends with how many are not shown, then the footer."""
    stats = stats_with([conn(f"c{i}", i) for i in range(50)])
    lines = frame(stats, Rates(), width=80, height=15)
    assert len(lines) == 15
    assert re.fullmatch(r"\.\.\. and \d+ more connection\(s\)", lines[-2])
    assert lines[-1].startswith("q: quit")
