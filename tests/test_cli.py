"""The ``ipc-server`` command, run for real in subprocesses (``python -m ipc_server``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import ipc_server
from clikit import CLI, Running, events, one_error_line, run, run_async
from ipc_server import IPCConnection, IPCServer
from ipc_server.cli import json_arg
from ipc_server.cli.data import DataError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix socket paths and signals")

COMMANDS = (
    "serve",
    "reply",
    "send",
    "request",
    "ping",
    "publish",
    "subscribe",
    "stats",
    "top",
    "bench",
    "demo",
)


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
        ("1.5e3", 1500.0),
        (str(2**64 - 1), 2**64 - 1),
        (str(-(2**63)), -(2**63)),
    ],
)
def test_data_argument_is_json(text: str, value: Any) -> None:
    """A data argument is parsed as JSON, integers up to the 64-bit bounds included."""
    assert json_arg(text) == value


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("hello", "DATA 'hello' is not JSON"),
        ("{bad", "DATA '{bad' is not JSON"),
        ("", "DATA '' is not JSON"),
        (str(2**64), "does not fit in 64 bits"),
        (str(-(2**63) - 1), "does not fit in 64 bits"),
        ("1" * 5000, "does not fit in 64 bits"),
        ("[NaN]", "NaN is not JSON"),
        ("-Infinity", "Infinity is not JSON"),
        ("1e400", "too big for a 64-bit float"),
    ],
)
def test_data_that_cannot_be_sent_is_refused(text: str, said: str) -> None:
    """Text that is not JSON, and numbers the wire cannot carry, are refused with exit 2."""
    with pytest.raises(DataError) as caught:
        json_arg(text)
    assert said in str(caught.value)
    assert caught.value.code == 2


def test_string_data_is_the_text_itself() -> None:
    """With --string a data argument is the text, whatever it looks like."""
    assert json_arg("hello world", string=True) == "hello world"
    assert json_arg("42", string=True) == "42"


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


def test_request_string_with_msgpack_and_compression(served: Running, path: str) -> None:
    """--string sends the text as a string, also over msgpack with compression."""
    result = run("request", "--path", path, "--codec", "msgpack", "--compress", "--string", "hello")
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
        assert run("publish", "--path", path, "news", '"again"').returncode == 0
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
    result = run("request", "--port", port, "-s", "tcp")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == "tcp"


# ---------------------------------------------------------------------- exit codes


def test_no_server_exits_1(path: str) -> None:
    """Every client command exits 1 with a clear message when nothing listens."""
    for args in (
        ["request", "1"],
        ["send", "1"],
        ["ping"],
        ["publish", "t", "1"],
        ["subscribe", "t"],
        ["stats"],
        ["top", "--count", "1"],
    ):
        result = run(*args, "--path", path)
        assert result.returncode == 1, args
        assert one_error_line(result.stderr, args[0]).endswith(
            f"no IPC server at {path}: no such socket file (is the server running?)"
        ), args


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


async def test_request_timeout_exits_3(odd_server: asyncio.Event, path: str) -> None:
    """A request the server never answers exits 3 after --timeout."""
    code, out, err = await run_async("request", "--path", path, "--timeout", "0.3", '"hang"')
    assert code == 3, err
    assert out == ""
    assert "timed out" in err


async def test_remote_error_exits_1(odd_server: asyncio.Event, path: str) -> None:
    """A request whose handler raises exits 1 and shows the remote exception."""
    code, _, err = await run_async("request", "--path", path, "-s", "boom")
    assert code == 1
    assert "ValueError: boom" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["request"],
        ["request", "1", "--timeout", "-1"],
        ["request", "1", "--timeout", "soon"],
        ["request", "1", "--host", "localhost"],
        ["request", "1", "--path", "p", "--port", "1"],
        ["request", "1", "--port", "70000"],
        ["request", "1", "--codec", "xml"],
        ["request", "hello"],
        ["request", str(2**64)],
        ["send", "[1, NaN]"],
        ["publish", "t", "{bad"],
        ["send", "1", "--payload", "{bad"],
        ["ping", "--count", "-1"],
        ["serve", "--socket-mode", "9"],
        ["serve", "--path", "/tmp/" + "x" * 200],
        ["reply", "--echo", "--command", "cat"],
        ["reply", "--echo", "1"],
        ["reply", "--jobs", "0"],
        ["top", "--interval", "0"],
        ["bench", "--workloads", "nope"],
        ["subscribe"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    """Bad command lines exit 2 with a message on stderr and nothing on stdout."""
    result = run(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "error" in result.stderr
    assert "Traceback" not in result.stderr
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


# ---------------------------------------------------------------------- - reads stdin


def run_with_stdin(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with ``stdin`` as its standard input."""
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=30.0)


def test_request_dash_reads_all_of_stdin(served: Running, path: str) -> None:
    """`request -` sends all of stdin as one JSON value (--string: as text, without its line end)."""
    result = run_with_stdin('{"a":\n  [1, 2]}\n', "request", "--path", path, "-")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == {"a": [1, 2]}
    result = run_with_stdin("two\nlines\n", "request", "--path", path, "--string", "-")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == "two\nlines"


def test_send_dash_sends_one_message_per_line(served: Running, path: str) -> None:
    """`send -` sends each line of stdin as a message, in order; blank lines are skipped."""
    result = run_with_stdin('1\n\n"two"\n{"three": 3}\n', "send", "--path", path, "-")
    assert result.returncode == 0, result.stderr
    assert [line["data"] for line in events(result.stdout)] == [1, "two", {"three": 3}]
    connect = served.wait_for("connect")
    got = [served.wait_for("message", id=connect["id"])["data"] for _ in range(3)]
    assert got == [1, "two", {"three": 3}]


def test_publish_dash_string_publishes_each_line(
    served: Running, path: str, running: list[Running]
) -> None:
    """`publish TOPIC --string -` publishes each line of stdin as a string."""
    sub = Running("subscribe", "--path", path, "news", "--count", "2", "--timeout", "10")
    running.append(sub)
    sub.wait_for("subscribed")
    result = run_with_stdin(
        "hello world\n{not json}\n", "publish", "--path", path, "news", "-s", "-"
    )
    assert result.returncode == 0, result.stderr
    assert sub.wait_for("message")["data"] == "hello world"
    assert sub.wait_for("message")["data"] == "{not json}"
    assert sub.finish() == 0


def test_a_bad_line_of_stdin_stops_with_exit_2(served: Running, path: str) -> None:
    """A line of stdin that is not JSON ends `send -` with exit 2, naming the line; the lines before were sent."""
    result = run_with_stdin("1\n2\noops\n4\n", "send", "--path", path, "-")
    assert result.returncode == 2
    assert one_error_line(result.stderr, "send").endswith(
        "stdin line 3 'oops' is not JSON (Expecting value at column 1); give --string to send text"
    )
    assert [line["data"] for line in events(result.stdout)] == [1, 2]


def test_bad_data_is_refused_before_connecting(served: Running, path: str) -> None:
    """Malformed JSON and integers over 64 bits: one line, exit 2, and nothing reaches the server."""
    for data, said in (
        ("hello", "DATA 'hello' is not JSON"),
        (str(2**64), "does not fit in 64 bits"),
    ):
        result = run("request", "--path", path, data)
        assert result.returncode == 2
        assert said in one_error_line(result.stderr, "request")
    result = run("request", "--path", path, '"after"')
    assert result.returncode == 0
    assert served.wait_for("connect")  # the first connect is the good request's
    assert served.wait_for("request")["data"] == "after"


# ---------------------------------------------------------------------- errors name the problem


@pytest.fixture
def listener(path: str) -> Iterator[Any]:
    """A Unix socket at ``path`` that is not an IPC server: ``listener(reply)`` serves ``reply``
    (bytes sent before hanging up; None: accept and say nothing)."""
    import socket
    import threading

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    peers: list[socket.socket] = []

    def serve(reply: bytes | None) -> None:
        def loop() -> None:
            while True:
                try:
                    peer, _ = sock.accept()
                except OSError:
                    return
                peers.append(peer)
                if reply is not None:
                    with contextlib.suppress(OSError):
                        peer.sendall(reply)
                    peer.close()

        threading.Thread(target=loop, daemon=True).start()

    try:
        yield serve
    finally:
        sock.close()
        for peer in peers:
            peer.close()


def test_not_an_ipc_server_is_one_line(listener: Any, path: str) -> None:
    """A socket that answers something else: exit 1, one line naming the address, no traceback."""
    listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    result = run("request", "--path", path, "1")
    assert result.returncode == 1
    line = one_error_line(result.stderr, "request")
    assert path in line
    assert "IPC" in line


def test_a_silent_socket_times_out_with_exit_3(listener: Any, path: str) -> None:
    """A socket that never answers the handshake: exit 3 within --timeout, one line naming it."""
    listener(None)
    started = time.monotonic()
    result = run("request", "--path", path, "--timeout", "0.5", "1")
    assert result.returncode == 3
    line = one_error_line(result.stderr, "request")
    assert f"no answer from {path}" in line
    assert time.monotonic() - started < 10


def test_a_stale_socket_file_is_one_line(path: str) -> None:
    """A socket file nobody listens on: exit 1, 'connection refused ... stale socket file'."""
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    result = run("send", "--path", path, "1")
    assert result.returncode == 1
    line = one_error_line(result.stderr, "send")
    assert f"no IPC server at {path}: connection refused" in line
    assert "stale socket file" in line


async def test_a_refused_client_is_one_line(path: str) -> None:
    """A server that turns the client away (full): exit 1, 'refused the connection: server full'."""
    server = IPCServer(path=path, max_connections=1)
    server.on("error", lambda error, connection: None)
    await server.start()
    holder = await ipc_server.IPCClient(path=path).connect()
    try:
        code, _, err = await run_async("request", "--path", path, "1")
        assert code == 1
        line = one_error_line(err, "request")
        assert f"the server at {path} refused the connection" in line
        assert "server full" in line
    finally:
        await holder.close()
        await server.close()


def test_error_lines_for_permission_and_closed_connections() -> None:
    """The one-line wording of errors that are hard to cause as root: permission, a closed connection."""
    from ipc_server.cli.output import error_message
    from ipc_server.errors import ConnectionClosedError

    text = "cannot connect to /run/x.sock: permission denied (the socket or its folder ...)"
    assert error_message(PermissionError(13, text)) == (text, 1)
    assert error_message(ConnectionClosedError("server closed")) == (
        "connection closed: server closed",
        1,
    )
    assert error_message(ValueError("a bug")) is None  # a bug keeps its traceback


# ---------------------------------------------------------------------- serve's lines


def test_serve_lines_have_the_time_and_log_pub_sub(
    served: Running, path: str, running: list[Running]
) -> None:
    """serve's JSON lines carry an ISO time; subscribe, publish and unsubscribe are logged."""
    import datetime

    sub = Running("subscribe", "--path", path, "news", "sport", "--count", "1", "--timeout", "10")
    running.append(sub)
    sub.wait_for("subscribed")
    subscribe = served.wait_for("subscribe")
    assert subscribe["topics"] == ["news"] or subscribe["topics"] == ["news", "sport"]
    assert run("publish", "--path", path, "news", '{"n": 1}').returncode == 0
    publish = served.wait_for("publish", topic="news")
    assert publish["data"] == {"n": 1}
    assert sub.finish() == 0  # closing unsubscribes nothing explicitly; the connection goes
    ready = served.seen[0]
    assert ready["event"] == "ready"
    for line in served.seen:
        when = datetime.datetime.fromisoformat(line["time"])
        assert when.tzinfo is not None
        assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60


async def test_serve_logs_unsubscribe(path: str, running: list[Running]) -> None:
    """An unsubscribe is logged with its topics."""
    server = Running("serve", "--path", path)
    running.append(server)
    server.wait_for("ready")
    client = await ipc_server.IPCClient(path=path).connect()
    try:
        await client.subscribe(["a", "b"])
        await client.unsubscribe("a")
    finally:
        await client.close()
    assert server.wait_for("subscribe")["topics"] == ["a", "b"]
    assert server.wait_for("unsubscribe")["topics"] == ["a"]


def test_serve_text_lines_start_with_the_time(path: str) -> None:
    """On a terminal (--format text) each line starts with HH:MM:SS.mmm and the event."""
    import re

    proc = subprocess.Popen(
        [*CLI, "serve", "--path", path, "--format", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert re.match(r"\d\d:\d\d:\d\d\.\d{3}  ready +listening on ", first), first
        assert run("publish", "--path", path, "t", "1").returncode == 0
        lines = [proc.stdout.readline() for _ in range(3)]
        assert [line.split()[1] for line in lines] == ["connect", "publish", "disconnect"]
        assert lines[1].rstrip().endswith("publish      " + lines[1].split()[2] + " [t] 1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def test_serve_quiet_logs_no_traffic(path: str, running: list[Running]) -> None:
    """--quiet logs connects and disconnects, not requests or publishes."""
    server = Running("serve", "--path", path, "--quiet")
    running.append(server)
    server.wait_for("ready")
    assert run("publish", "--path", path, "t", "1").returncode == 0
    assert run("request", "--path", path, "2").returncode == 0
    server.wait_for("disconnect")
    server.wait_for("disconnect")
    assert {line["event"] for line in server.seen} == {"ready", "connect", "disconnect"}
