"""The ``ipc-server`` command line: its arguments, its help, and ``main``.

``build_parser`` lays out the commands and their options (the argument types
check numbers, ports and file modes before anything runs); ``main`` runs the
command that was picked and turns its failures into an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import __version__, compiled
from .._loop import run as run_loop
from ..codecs import CODECS
from .bench import cmd_bench, workload_list
from .commands import cmd_ping, cmd_publish, cmd_request, cmd_send, cmd_subscribe
from .data import parse_data
from .demo import cmd_demo
from .output import EXIT_ERROR, PROG, Output, error_message, report_error
from .serve import cmd_reply, cmd_serve
from .stats import cmd_stats
from .top import cmd_top

__all__ = ("build_parser", "json_arg", "main")


# ---------------------------------------------------------------------- argument types


def json_arg(text: str, *, string: bool = False) -> Any:
    """A data argument: JSON (``string``: the text itself); raises ``DataError`` (exit 2)."""
    return parse_data(text, string=string)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode must be 000-777, not {text}")
    return mode


N = TypeVar("N", int, float)


def _at_least_zero(parse: Callable[[str], N], what: str, name: str) -> Callable[[str], N]:
    """An argparse ``type=`` for a number >= 0 (not NaN), with errors naming ``what``."""

    def check(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < 0 or value != value:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, not {text}")
        return value

    return check


_seconds = _at_least_zero(float, "a number of seconds", "seconds")
_count = _at_least_zero(int, "a count", "count")


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if value < 0.05:
        raise argparse.ArgumentTypeError(f"interval must be at least 0.05 s, not {text}")
    return value


# ---------------------------------------------------------------------- parser

_DESCRIPTION = """\
Talk to an ipc_server (or Node net-ipc) server from the shell, run one, watch
one, or see it work. Output is JSON lines when stdout is not a terminal, text
on one. Data arguments are JSON (--string: text); - reads them from stdin.
Exit codes: 0 ok, 1 error, 2 usage, 3 timeout."""

_EPILOG = """\
examples:
  ipc-server serve --path /tmp/app.sock
  ipc-server request --path /tmp/app.sock '{"cmd": "say"}'
  ipc-server subscribe --path /tmp/app.sock news --count 1
  ipc-server top --path /tmp/app.sock
  ipc-server demo

Without --path/--host/--port the address is <tempdir>/isdk-ipc (a named pipe
on Windows), the default of the library and of Node @isdk/ipc-server."""

_EPILOGS = {
    "serve": """\
example:
  ipc-server serve --path /tmp/app.sock --codec json --no-compress
  ipc-server serve --path /tmp/app.sock --metrics-port 9464
  ipc-server serve --path /tmp/app.sock --backplane nats://broker:4222 --namespace app

Requests are answered with their own data (echo); pub/sub works between
clients. Each line has the time. Stops gracefully on Ctrl-C or SIGTERM (exit 0).""",
    "reply": """\
example:
  ipc-server reply --path /tmp/app.sock                  # echo
  ipc-server reply --path /tmp/app.sock '{"ok": true}'   # a fixed answer
  ipc-server reply --path /tmp/app.sock --command 'jq .n+1' --count 1

A server that answers each request: with the request itself (--echo, the
default), with DATA, or with the stdout of --command, which gets the request
as one JSON line on stdin (its stdout is JSON; --string: text). A command that
fails or runs over --timeout gives the requester a RemoteError.""",
    "send": """\
example:
  ipc-server send --path /tmp/app.sock '{"event": "hello"}'
  ipc-server send --path /tmp/app.sock --string 'hello world'
  tail -f events.jsonl | ipc-server send --path /tmp/app.sock -   # one per line""",
    "request": """\
example:
  ipc-server request --path /tmp/app.sock '{"cmd": "say"}' --timeout 2
  ipc-server request --path /tmp/app.sock - < request.json

Exit 3 when no answer comes within --timeout, 1 when the handler raised.""",
    "ping": """\
example:
  ipc-server ping --path /tmp/app.sock --count 5 --interval 0.2""",
    "publish": """\
example:
  ipc-server publish --path /tmp/app.sock news '{"headline": "hi"}'
  ipc-server publish --path /tmp/app.sock news --string - < headlines.txt""",
    "subscribe": """\
example:
  ipc-server subscribe --path /tmp/app.sock news sport --count 10

Prints one line per message until --count messages, Ctrl-C or SIGTERM (exit 0).
Reconnects when the server restarts with allow_reconnect.""",
    "stats": """\
example:
  ipc-server stats --path /tmp/app.sock
  ipc-server stats --path /tmp/app.sock --connections | jq .per_connection

A server answers peers of its own user over a Unix socket (its allow_stats
option; over TCP only when enabled: ipc-server serve --allow-stats).""",
    "top": """\
example:
  ipc-server top --path /tmp/app.sock
  ipc-server top --path /tmp/app.sock --count 3 | jq .rates

On a terminal: redrawn every --interval seconds; q or Ctrl-C quits. Piped:
one JSON line per refresh (--format text: a plain frame each time).""",
    "bench": """\
example:
  ipc-server bench --quick
  ipc-server bench --workloads seq_rtt,big --codec msgpack

A quick look on this machine; the full suite (other libraries, several runs)
is python -m benchmarks in the source tree.""",
    "demo": """\
example:
  ipc-server demo
  ipc-server demo --fast | jq -c .text

A server and three clients in separate processes on a temporary socket:
connect with a payload, request/response, survey, pub/sub, a killed client,
a server restart with reconnect, and a clean shutdown, with a pause between
steps to follow it (--fast: none).""",
}

_DATA_HELP = "JSON (with --string: text); - reads stdin"


def _add_data(p: argparse.ArgumentParser, help: str = _DATA_HELP, optional: bool = False) -> None:
    p.add_argument("data", metavar="DATA", nargs="?" if optional else None, default=None, help=help)
    p.add_argument(
        "--string",
        "--raw",
        "-s",
        action="store_true",
        help="DATA (or each line of stdin) is text, sent as a JSON string",
    )


def _add_server_options(p: argparse.ArgumentParser, codec: str) -> None:
    p.add_argument(
        "--codec",
        choices=CODECS,
        default=codec,
        help=f"best codec to agree to when a client asks ({codec})",
    )
    p.add_argument("--no-compress", action="store_true", help="decline compression")
    p.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o600,
        metavar="MODE",
        help="octal file mode of the Unix socket (600)",
    )
    p.add_argument(
        "--allow-stats",
        action="store_true",
        help="answer the stats request of every peer, over TCP too (default: peers of "
        "this user over a Unix socket)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``ipc-server`` argument parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--format",
        choices=("auto", "json", "text"),
        default="auto",
        help="output: JSON lines or text (auto: JSON lines unless stdout is a terminal)",
    )

    address = argparse.ArgumentParser(add_help=False)
    group = address.add_argument_group("address")
    group.add_argument(
        "--path",
        help="Unix socket path, or a name placed in the temp folder (a pipe name on "
        "Windows); default isdk-ipc",
    )
    group.add_argument("--host", help="TCP host (with --port; default 127.0.0.1)")
    group.add_argument("--port", type=_port, help="TCP port (selects TCP)")

    client = argparse.ArgumentParser(add_help=False, parents=[address])
    cgroup = client.add_argument_group("connection")
    cgroup.add_argument(
        "--codec", choices=CODECS, default="json", help="body codec to ask for (json)"
    )
    cgroup.add_argument("--compress", action="store_true", help="ask for compression")
    cgroup.add_argument(
        "--payload",
        default=None,
        metavar="JSON",
        help="payload sent with the connection (the server's connect event)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=fmt
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__} (python {sys.version.split()[0]}, "
        f"{'compiled core' if compiled else 'pure Python'})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def add(
        name: str, help: str, parents: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=_EPILOGS[name],
            parents=[*parents, common],
            formatter_class=fmt,
        )

    p = add("serve", "run an echo + pub/sub server until Ctrl-C / SIGTERM", [address])
    _add_server_options(p, "msgpack")
    p.add_argument(
        "--allow-reconnect",
        action="store_true",
        help="on shutdown, tell clients to reconnect (to the next server on this address)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="log only connects, disconnects and errors (not each message, request, "
        "subscribe, unsubscribe and publish)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs the metrics extra)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the metrics server (127.0.0.1)",
    )
    p.add_argument(
        "--backplane",
        action="append",
        default=None,
        metavar="URL",
        help="share topics, worker groups and services with the servers of other hosts "
        "through this NATS broker (nats://host:4222, tls://...; repeat for a cluster; "
        "needs the nats extra)",
    )
    p.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="the backplane's namespace (required with --backplane): servers share "
        "only with servers of the same namespace",
    )
    p.add_argument(
        "--backplane-creds",
        default=None,
        metavar="FILE",
        help="a NATS .creds file (JWT and nkey) for the broker",
    )
    p.set_defaults(run=cmd_serve)

    p = add("reply", "run a server that answers each request from the shell", [address])
    _add_data(p, "answer every request with this (JSON; - reads stdin once)", optional=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--echo", action="store_true", help="answer with the request itself (the default)"
    )
    how.add_argument(
        "--command",
        metavar="CMD",
        help="answer with the stdout of CMD (a shell command), given the request on stdin",
    )
    p.add_argument(
        "--count", "-c", type=_count, default=0, help="exit after this many answers (0: never)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds a --command may run (10; 0: no limit)",
    )
    p.add_argument(
        "--jobs", type=_positive, default=4, help="--command runs at most this many at once (4)"
    )
    _add_server_options(p, "msgpack")
    p.set_defaults(run=cmd_reply)

    p = add("send", "send a one-way message", [client])
    _add_data(p)
    p.set_defaults(run=cmd_send)

    p = add("request", "send a request and print the reply", [client])
    _add_data(p, "JSON (with --string: text); - reads all of stdin as one value")
    p.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds to wait (10; 0: forever)"
    )
    p.set_defaults(run=cmd_request)

    p = add("ping", "measure round trips to the server", [client])
    p.add_argument(
        "--count", "-c", type=_count, default=1, help="pings to send (1; 0: until Ctrl-C)"
    )
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between pings (1)")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per ping (10)")
    p.set_defaults(run=cmd_ping)

    p = add("publish", "publish a message to a topic", [client])
    p.add_argument("topic", metavar="TOPIC")
    _add_data(p)
    p.set_defaults(run=cmd_publish)

    p = add("subscribe", "print the messages of one or more topics", [client])
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument(
        "--count", "-c", type=_count, default=0, help="exit after this many messages (0: never)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=0.0,
        help="exit 3 if --count messages did not come within this many seconds (0: no limit)",
    )
    p.set_defaults(run=cmd_subscribe)

    p = add("stats", "print what a running server holds and has carried", [client])
    p.add_argument("--connections", action="store_true", help="each connection's stats too")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait (10)")
    p.set_defaults(run=cmd_stats)

    p = add("top", "a live view of a running server: connections, rates, topics", [client])
    p.add_argument(
        "--interval", "-d", type=_interval, default=1.0, help="seconds between refreshes (1)"
    )
    p.add_argument(
        "--count",
        "-c",
        "-n",
        type=_count,
        default=0,
        help="exit after this many refreshes (0: never)",
    )
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per refresh (10)")
    p.set_defaults(run=cmd_top)

    p = add("bench", "quick benchmarks against a server in a subprocess", [])
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    p.add_argument(
        "--workloads",
        type=workload_list,
        default=None,
        metavar="NAME,...",
        help="workloads to run: seq_rtt, pipelined, oneway, fanout, big",
    )
    p.add_argument("--codec", choices=CODECS, default="json", help="client codec (json)")
    p.add_argument("--server-codec", choices=CODECS, default="msgpack", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_bench)

    p = add("demo", "watch a server and three clients talk, in separate processes", [])
    p.add_argument("--fast", action="store_true", help="no pauses between the steps")
    p.set_defaults(run=cmd_demo)
    return parser


# ---------------------------------------------------------------------- main


def _stdout_closed() -> bool:
    """Whether the reader of stdout has gone (a pipe closed at the other end)."""
    poll = getattr(select, "poll", None)
    if poll is None:  # pragma: no cover - Windows
        return False
    try:
        poller = poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _log_to_stderr(prog: str, level: int) -> None:
    """The library's log lines as ``prog: warning: ...`` on stderr, from ``level`` up.

    A client command reports what went wrong itself, in one line: it shows only
    the library's errors. ``serve`` and ``reply`` show its warnings too.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter(prog))
    logger = logging.getLogger("ipc_server")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class _LogFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_SERVERS = ("serve", "reply")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``--help`` / usage errors exit here).

    Every failure the user can act on is one line on stderr and an exit code
    (``output.error_message``); only a bug shows a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.format)
    prog = f"{PROG} {args.command}"
    _log_to_stderr(prog, logging.WARNING if args.command in _SERVERS else logging.ERROR)
    try:
        result = args.run(args, out)
        if asyncio.iscoroutine(result):
            result = run_loop(result)
        return int(result)
    except BrokenPipeError as exc:
        if not _stdout_closed():
            report_error(prog, f"the connection broke: {exc.strerror or exc}")
            return EXIT_ERROR
        # e.g. `ipc-server subscribe t | head -1`: nobody reads stdout any more.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        report_error(prog, "interrupted")
        return EXIT_ERROR
    except Exception as exc:
        known = error_message(exc)
        if known is None:
            raise
        message, code = known
        report_error(prog, message)
        return code
