"""The ``ipc-server`` command (also ``python -m ipc_server``), modelled on the ``nats`` CLI.

Commands: ``serve`` (an echo + pub/sub server), ``send``, ``request``,
``ping``, ``publish``, ``subscribe``, ``bench`` and ``demo``.

Output is JSON lines (one object with an ``"event"`` key per line) when
stdout is not a terminal, readable text on one; ``--format`` overrides.
Errors go to stderr. Exit codes: 0 ok, 1 error (no server, refused, remote
error), 2 usage, 3 timeout. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

from . import __version__
from ._loop import run as run_loop
from .client import IPCClient
from .codecs import CODECS
from .errors import (
    AddressInUseError,
    HandshakeError,
    IPCError,
    RemoteError,
    RequestTimeoutError,
)
from .server import IPCConnection, IPCServer

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

PROG = "ipc-server"


# ---------------------------------------------------------------------- output


def to_json(value: Any) -> str:
    """One compact JSON line; values JSON cannot hold (bytes, ext types) are shown, not lost."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(obj).hex()}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


class Output:
    """Where results go: JSON lines (not a terminal) or readable text (a terminal)."""

    def __init__(self, fmt: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.json = fmt == "json" or (fmt == "auto" and not _isatty(self.stream))

    def emit(self, event: str, text: str, **fields: Any) -> None:
        """Write one result: ``{"event": event, **fields}`` as JSON, or ``text``."""
        line = to_json({"event": event, **fields}) if self.json else text
        self.stream.write(line + "\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]


class CommandError(Exception):
    """A failure the command reports on stderr and turns into an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


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


async def _shut(client: IPCClient) -> None:
    """Close gracefully when connected (queued sends are flushed); never wait long."""
    if client.is_ready:
        try:
            await client.close("done", timeout=2.0)
        except IPCError:
            client.destroy("done")
    else:
        client.destroy("done")


async def _cmd_send(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        await client.send(args.data)
    finally:
        await _shut(client)
    out.emit("sent", f"sent {to_json(args.data)}", data=args.data)
    return EXIT_OK


async def _cmd_request(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        started = time.perf_counter()
        reply = await client.request(args.data, timeout=_timeout(args.timeout))
        ms = (time.perf_counter() - started) * 1000.0
    finally:
        await _shut(client)
    out.emit("reply", f"reply in {ms:.3f} ms: {to_json(reply)}", data=reply, ms=round(ms, 3))
    return EXIT_OK


async def _cmd_ping(args: argparse.Namespace, out: Output) -> int:
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
        await _shut(client)
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


async def _cmd_publish(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args)
    try:
        await _connect(client, args)
        ok = await client.publish(args.topic, args.data)
    finally:
        await _shut(client)
    if not ok:
        raise CommandError(f"the server refused to publish to {args.topic!r}")
    out.emit(
        "published",
        f"published to {args.topic}: {to_json(args.data)}",
        topic=args.topic,
        data=args.data,
    )
    return EXIT_OK


async def _cmd_subscribe(args: argparse.Namespace, out: Output) -> int:
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
            await _shut(client)
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


async def _cmd_serve(args: argparse.Namespace, out: Output) -> int:
    server = _make_server(args)
    stop = asyncio.Event()

    def log(event: str, text: str, **fields: Any) -> None:
        out.emit(event, f"{_clock()}  {event:<10}  {text}", **fields)

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


# ---------------------------------------------------------------------- bench


async def _cmd_bench(args: argparse.Namespace, out: Output) -> int:
    from .bench import cmd_bench

    return await cmd_bench(args, out)


def _workload_list(text: str) -> list[str]:
    from .bench import workload_list

    return workload_list(text)


# ---------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from .demo import run_demo

    return run_demo(json_lines=out.json, stream=out.stream)


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
        version=f"{PROG} {__version__} (python {sys.version.split()[0]})",
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
    p.set_defaults(run=_cmd_serve)

    p = add("send", "send a one-way message", [client])
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
    p.set_defaults(run=_cmd_send)

    p = add("request", "send a request and print the reply", [client])
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
    p.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds to wait (10; 0: forever)"
    )
    p.set_defaults(run=_cmd_request)

    p = add("ping", "measure round trips to the server", [client])
    p.add_argument(
        "--count", "-c", type=_count, default=1, help="pings to send (1; 0: until Ctrl-C)"
    )
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between pings (1)")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per ping (10)")
    p.set_defaults(run=_cmd_ping)

    p = add("publish", "publish a message to a topic", [client])
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("data", type=json_arg, metavar="DATA", help="JSON, or a bare word as a string")
    p.set_defaults(run=_cmd_publish)

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
    p.set_defaults(run=_cmd_subscribe)

    p = add("bench", "quick benchmarks against a server in a subprocess", [])
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    p.add_argument(
        "--workloads",
        type=_workload_list,
        default=None,
        metavar="NAME,...",
        help="workloads to run: seq_rtt, pipelined, oneway, fanout, big",
    )
    p.add_argument("--codec", choices=CODECS, default="json", help="client codec (json)")
    p.add_argument("--server-codec", choices=CODECS, default="msgpack", help=argparse.SUPPRESS)
    p.set_defaults(run=_cmd_bench)

    p = add("demo", "watch a server and three clients talk, in separate processes", [])
    p.set_defaults(run=_cmd_demo)
    return parser


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
        _error(prog, str(exc))
        return exc.code
    except (RequestTimeoutError, asyncio.TimeoutError, TimeoutError) as exc:
        _error(prog, f"timed out: {exc}" if str(exc) else "timed out")
        return EXIT_TIMEOUT
    except RemoteError as exc:
        _error(prog, f"the server's handler raised {exc}")
        return EXIT_ERROR
    except BrokenPipeError:  # pragma: no cover - e.g. `ipc-server subscribe t | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (IPCError, OSError) as exc:
        _error(prog, f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error(prog, "interrupted")
        return EXIT_ERROR


def _error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
