"""The ``ipc-server`` command line: its arguments, its help, and ``main``.

``build_parser`` lays out the commands and their options (the argument types
check numbers, ports and file modes before anything runs); ``main`` runs the
command that was picked and turns its failures into an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import __version__, compiled
from .._loop import run as run_loop
from ..codecs import CODECS
from ..errors import IPCError, RemoteError, RequestTimeoutError
from .bench import cmd_bench, workload_list
from .commands import cmd_ping, cmd_publish, cmd_request, cmd_send, cmd_serve, cmd_subscribe
from .demo import cmd_demo
from .output import (
    EXIT_ERROR,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PROG,
    CommandError,
    Output,
    report_error,
)

__all__ = ("build_parser", "json_arg", "main")


# ---------------------------------------------------------------------- argument types


def json_arg(text: str) -> Any:
    """A data argument: JSON, or the text itself when it is not valid JSON (a bare word)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


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


# ---------------------------------------------------------------------- parser

_DESCRIPTION = """\
Talk to an ipc_server (or Node net-ipc) server from the shell, run one, or see
it work. Output is JSON lines when stdout is not a terminal, text on one.
Exit codes: 0 ok, 1 error, 2 usage, 3 timeout."""

_EPILOG = """\
examples:
  ipc-server serve --path /tmp/app.sock
  ipc-server request --path /tmp/app.sock '{"cmd": "say"}'
  ipc-server subscribe --path /tmp/app.sock news --count 1
  ipc-server demo

Without --path/--host/--port the address is <tempdir>/isdk-ipc (a named pipe
on Windows), the default of the library and of Node @isdk/ipc-server."""

_EPILOGS = {
    "serve": """\
example:
  ipc-server serve --path /tmp/app.sock --codec json --no-compress

Requests are answered with their own data (echo); pub/sub works between
clients. Stops gracefully on Ctrl-C or SIGTERM (exit 0).""",
    "send": """\
example:
  ipc-server send --path /tmp/app.sock '{"event": "hello"}'
  ipc-server send --path /tmp/app.sock hello       # a bare word is a string""",
    "request": """\
example:
  ipc-server request --path /tmp/app.sock '{"cmd": "say"}' --timeout 2

Exit 3 when no answer comes within --timeout, 1 when the handler raised.""",
    "ping": """\
example:
  ipc-server ping --path /tmp/app.sock --count 5 --interval 0.2""",
    "publish": """\
example:
  ipc-server publish --path /tmp/app.sock news '{"headline": "hi"}'""",
    "subscribe": """\
example:
  ipc-server subscribe --path /tmp/app.sock news sport --count 10

Prints one line per message until --count messages, Ctrl-C or SIGTERM (exit 0).
Reconnects when the server restarts with allow_reconnect.""",
    "bench": """\
example:
  ipc-server bench --quick
  ipc-server bench --workloads seq_rtt,big --codec msgpack

A quick look on this machine; the full suite (other libraries, several runs)
is python -m benchmarks in the source tree.""",
    "demo": """\
example:
  ipc-server demo

A server and three clients in separate processes on a temporary socket:
connect with a payload, request/response, survey, pub/sub, a killed client,
a server restart with reconnect, and a clean shutdown. Bounded to ~15 s.""",
}


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
        type=json_arg,
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
    p.add_argument(
        "--codec",
        choices=CODECS,
        default="msgpack",
        help="best codec to agree to when a client asks (msgpack)",
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
        "--allow-reconnect",
        action="store_true",
        help="on shutdown, tell clients to reconnect (to the next server on this address)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each message and request")
    p.set_defaults(run=cmd_serve)

    p = add("send", "send a one-way message", [client])
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
    p.set_defaults(run=cmd_send)

    p = add("request", "send a request and print the reply", [client])
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
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
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
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
    p.set_defaults(run=cmd_demo)
    return parser


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``--help`` / usage errors exit here)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.format)
    prog = f"{PROG} {args.command}"
    try:
        result = args.run(args, out)
        if asyncio.iscoroutine(result):
            result = run_loop(result)
        return int(result)
    except CommandError as exc:
        if exc.code == EXIT_USAGE:
            print(f"usage: {prog} --help", file=sys.stderr)
        report_error(prog, str(exc))
        return exc.code
    except (RequestTimeoutError, asyncio.TimeoutError, TimeoutError) as exc:
        report_error(prog, f"timed out: {exc}" if str(exc) else "timed out")
        return EXIT_TIMEOUT
    except RemoteError as exc:
        report_error(prog, f"the server's handler raised {exc}")
        return EXIT_ERROR
    except BrokenPipeError:  # pragma: no cover - e.g. `ipc-server subscribe t | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (IPCError, OSError) as exc:
        report_error(prog, f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        report_error(prog, "interrupted")
        return EXIT_ERROR
