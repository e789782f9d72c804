"""The ``ipc-server`` command, run for real in subprocesses (``python -m ipc_server``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import ipc_server
from ipc_server import IPCConnection, IPCServer
from ipc_server.cli import json_arg

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix socket paths and signals")

CLI = [sys.executable, "-m", "ipc_server"]
COMMANDS = ("serve", "send", "request", "ping", "publish", "subscribe", "bench", "demo")


def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (killed after ``timeout``)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines of a run."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class Running:
    """A long-running command whose JSON lines are read by a thread, waited on with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next line with ``event`` (and ``match``); fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no {event!r} line within {timeout} s: {self.seen}") from None
            if item is None:
                self.lines.put(None)
                raise AssertionError(f"output ended before {event!r}: {self.seen} {self.stderr}")
            self.seen.append(item)
            if item.get("event") == event and all(item.get(k) == v for k, v in match.items()):
                return item

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the exit code (fails after ``timeout``)."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short folder under /tmp (pytest's tmp_path can exceed sun_path)."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def path(sock_dir: str) -> str:
    """A socket path in the short folder."""
    return os.path.join(sock_dir, "s")


@pytest.fixture
def served(path: str) -> Iterator[Running]:
    """``ipc-server serve`` on ``path``, ready."""
    server = Running("serve", "--path", path)
    try:
        server.wait_for("ready", address=path)
        yield server
    finally:
        server.kill()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Extra long-running commands of a test, killed at its end."""
    procs: list[Running] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()


# ---------------------------------------------------------------------- data arguments


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("42", 42),
        ("null", None),
        ('"quoted"', "quoted"),
        ("hello", "hello"),
        ("hello world", "hello world"),
    ],
)
def test_data_argument_is_json_or_a_bare_string(text: str, value: Any) -> None:
    """A data argument is parsed as JSON; text that is not JSON is a string."""
    assert json_arg(text) == value


# ---------------------------------------------------------------------- against `serve`


def test_request_echoes_json(served: Running, path: str) -> None:
    """`request` prints the echoed reply as a JSON line and exits 0."""
    result = run("request", "--path", path, '{"a": [1, 2]}')
    assert result.returncode == 0, result.stderr
    (line,) = events(result.stdout)
    assert line["event"] == "reply"
    assert line["data"] == {"a": [1, 2]}
    assert line["ms"] >= 0
    assert served.wait_for("request")["data"] == {"a": [1, 2]}


def test_request_bare_word_with_msgpack_and_compression(served: Running, path: str) -> None:
    """A bare word travels as a string, also over msgpack with compression."""
    result = run("request", "--path", path, "--codec", "msgpack", "--compress", "hello")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == "hello"


def test_request_text_format(served: Running, path: str) -> None:
    """`--format text` prints a readable line instead of JSON."""
    result = run("request", "--path", path, "--format", "text", "[1, 2]")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("reply in ")
    assert result.stdout.rstrip().endswith("[1, 2]")


def test_send_is_logged_by_serve_with_the_payload(served: Running, path: str) -> None:
    """`send` delivers a message; serve logs the connect payload and the message."""
    result = run("send", "--path", path, "--payload", '{"name": "t"}', '{"n": 1}')
    assert result.returncode == 0, result.stderr
    assert events(result.stdout) == [{"event": "sent", "data": {"n": 1}}]
    connect = served.wait_for("connect", payload={"name": "t"})
    assert connect["pid"] is not None
    assert served.wait_for("message", id=connect["id"])["data"] == {"n": 1}
    served.wait_for("disconnect", id=connect["id"])


def test_ping_count(served: Running, path: str) -> None:
    """`ping --count 3` prints three pongs and a summary."""
    result = run("ping", "--path", path, "--count", "3", "--interval", "0")
    assert result.returncode == 0, result.stderr
    lines = events(result.stdout)
    assert [line["event"] for line in lines] == ["pong", "pong", "pong", "summary"]
    assert [line["seq"] for line in lines[:3]] == [1, 2, 3]
    assert lines[3]["count"] == 3


def test_publish_subscribe_count(served: Running, path: str, running: list[Running]) -> None:
    """`subscribe A B --count 2` prints the messages published to both topics, then exits 0."""
    sub = Running("subscribe", "--path", path, "news", "close", "--count", "2", "--timeout", "10")
    running.append(sub)
    assert sub.wait_for("subscribed")["topics"] == ["news", "close"]
    first = run("publish", "--path", path, "news", '{"headline": "hi"}')
    assert first.returncode == 0, first.stderr
    assert events(first.stdout) == [
        {"event": "published", "topic": "news", "data": {"headline": "hi"}}
    ]
    # A topic named like a client event ("close") is still just a topic.
    second = run("publish", "--path", path, "close", "0")
    assert second.returncode == 0, second.stderr
    assert sub.wait_for("message", topic="news")["data"] == {"headline": "hi"}
    assert sub.wait_for("message", topic="close")["data"] == 0
    assert sub.finish() == 0


def test_subscribe_timeout_exits_3(served: Running, path: str) -> None:
    """`subscribe --count 1 --timeout` exits 3 when no message comes in time."""
    result = run("subscribe", "--path", path, "quiet", "--count", "1", "--timeout", "0.3")
    assert result.returncode == 3
    assert "timed out" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_subscribe_stops_on_signal(
    served: Running, path: str, running: list[Running], sig: signal.Signals
) -> None:
    """`subscribe` without --count runs until SIGINT/SIGTERM, then exits 0."""
    sub = Running("subscribe", "--path", path, "news")
    running.append(sub)
    sub.wait_for("subscribed")
    sub.proc.send_signal(sig)
    assert sub.finish() == 0


def test_subscribe_exits_1_when_the_server_closes_for_good(
    path: str, running: list[Running]
) -> None:
    """A subscriber whose server closes for good exits 1 with the reason."""
    server = Running("serve", "--path", path)
    running.append(server)
    server.wait_for("ready")
    sub = Running("subscribe", "--path", path, "news")
    running.append(sub)
    sub.wait_for("subscribed")
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert sub.finish() == 1
    assert "server closed" in "".join(sub.stderr)


def test_subscribe_survives_a_serve_restart(path: str, running: list[Running]) -> None:
    """`serve --allow-reconnect` lets a subscriber reconnect to the next server and keep its topic."""
    first = Running("serve", "--path", path, "--allow-reconnect")
    running.append(first)
    first.wait_for("ready")
    sub = Running("subscribe", "--path", path, "news", "--count", "1", "--timeout", "20")
    running.append(sub)
    sub.wait_for("subscribed")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_for("closed")["allow_reconnect"] is True
    assert first.finish() == 0
    second = Running("serve", "--path", path)
    running.append(second)
    second.wait_for("ready")
    second.wait_for("connect")  # the subscriber is back
    deadline = time.monotonic() + 10
    # Its subscription is restored just after it reconnects: publish until it arrives.
    while sub.proc.poll() is None and time.monotonic() < deadline:
        assert run("publish", "--path", path, "news", "again").returncode == 0
        with contextlib.suppress(subprocess.TimeoutExpired):
            sub.proc.wait(timeout=0.2)
    assert sub.finish() == 0
    assert sub.wait_for("message", topic="news")["data"] == "again"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_closes_gracefully_on_signal(
    path: str, running: list[Running], sig: signal.Signals
) -> None:
    """`serve` closes on SIGINT/SIGTERM: a 'closed' line, exit 0, socket file removed."""
    server = Running("serve", "--path", path, "--socket-mode", "660")
    running.append(server)
    server.wait_for("ready")
    assert os.stat(path).st_mode & 0o777 == 0o660
    server.proc.send_signal(sig)
    server.wait_for("closed")
    assert server.finish() == 0
    assert not os.path.exists(path)


def test_serve_address_in_use_exits_1(served: Running, path: str) -> None:
    """A second `serve` on a live server's path exits 1 and leaves it alone."""
    result = run("serve", "--path", path)
    assert result.returncode == 1
    assert "in use" in result.stderr
    assert run("ping", "--path", path).returncode == 0


def test_serve_over_tcp(running: list[Running]) -> None:
    """`serve --host --port 0` listens on TCP; `request --port` reaches it."""
    server = Running("serve", "--host", "127.0.0.1", "--port", "0", "--codec", "json")
    running.append(server)
    address = server.wait_for("ready")["address"]
    port = address.rsplit(":", 1)[1]
    result = run("request", "--port", port, "tcp")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == "tcp"


# ---------------------------------------------------------------------- exit codes


def test_no_server_exits_1(path: str) -> None:
    """Every client command exits 1 with a clear message when nothing listens."""
    for args in (
        ["request", "x"],
        ["send", "x"],
        ["ping"],
        ["publish", "t", "x"],
        ["subscribe", "t"],
    ):
        result = run(*args, "--path", path)
        assert result.returncode == 1, args
        assert "no server listening" in result.stderr, args


@pytest.fixture
async def odd_server(path: str) -> AsyncIterator[asyncio.Event]:
    """An in-test server: requests "hang" are never answered (until released), "boom" raises."""
    release = asyncio.Event()
    server = IPCServer(path=path)

    async def on_request(request: Any, respond: Any, connection: IPCConnection) -> None:
        if request == "hang":
            await release.wait()
        elif request == "boom":
            raise ValueError("boom")

    server.on("request", on_request)
    server.on("error", lambda error, connection: None)
    await server.start()
    try:
        yield release
    finally:
        release.set()
        await server.close(timeout=2.0)


async def run_async(*args: str) -> tuple[int, str, str]:
    """Run the command while this test's loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_request_timeout_exits_3(odd_server: asyncio.Event, path: str) -> None:
    """A request the server never answers exits 3 after --timeout."""
    code, out, err = await run_async("request", "--path", path, "--timeout", "0.3", "hang")
    assert code == 3, err
    assert out == ""
    assert "timed out" in err


async def test_remote_error_exits_1(odd_server: asyncio.Event, path: str) -> None:
    """A request whose handler raises exits 1 and shows the remote exception."""
    code, _, err = await run_async("request", "--path", path, "boom")
    assert code == 1
    assert "ValueError: boom" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["request"],
        ["request", "x", "--timeout", "-1"],
        ["request", "x", "--timeout", "soon"],
        ["request", "x", "--host", "localhost"],
        ["request", "x", "--path", "p", "--port", "1"],
        ["request", "x", "--port", "70000"],
        ["request", "x", "--codec", "xml"],
        ["ping", "--count", "-1"],
        ["serve", "--socket-mode", "9"],
        ["serve", "--path", "/tmp/" + "x" * 200],
        ["bench", "--workloads", "nope"],
        ["subscribe"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    """Bad command lines exit 2 with a message on stderr and nothing on stdout."""
    result = run(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "error" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------- help and version


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str) -> None:
    """`COMMAND --help` exits 0 with usage and an example."""
    result = run(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: ipc-server {command}")
    assert "example:" in result.stdout
    assert f"ipc-server {command}" in result.stdout.split("example:")[1]


def test_top_level_help_lists_commands() -> None:
    """`--help` lists every command and the exit codes."""
    result = run("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "3 timeout" in result.stdout


def test_version() -> None:
    """`--version` prints the package version, and which build runs."""
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.split()[:2] == ["ipc-server", ipc_server.__version__]
    assert ("compiled core" if ipc_server.compiled else "pure Python") in result.stdout


def test_console_script_is_installed() -> None:
    """The `ipc-server` console script runs the same command line."""
    script = shutil.which("ipc-server", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert ipc_server.__version__ in result.stdout


# ---------------------------------------------------------------------- bench


def test_bench_quick_json() -> None:
    """`bench --quick` runs every workload against its own server and prints one result each."""
    result = run("bench", "--quick", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = events(result.stdout)
    assert [line["workload"] for line in lines] == [
        "seq_rtt",
        "pipelined",
        "oneway",
        "fanout",
        "big",
    ]
    assert all(line["event"] == "result" for line in lines)
    assert lines[0]["p50_us"] > 0
    assert lines[4]["mb_per_s"] > 0


def test_bench_table_text() -> None:
    """`bench --format text` prints a table (and no progress bar when stderr is not a TTY)."""
    result = run("bench", "--quick", "--workloads", "seq_rtt,oneway", "--format", "text")
    assert result.returncode == 0, result.stderr
    assert "seq_rtt" in result.stdout
    assert "msg/s" in result.stdout
    assert "\r" not in result.stderr
