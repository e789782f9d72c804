"""What every ``ipc-server`` command shares: exit codes, where results go, how errors read.

Results are JSON lines (one object with an ``"event"`` key per line) when
stdout is not a terminal, readable text on one; ``--format`` overrides.
Errors go to stderr as one line, ``ipc-server COMMAND: error: ...``, never a
traceback (``error_message`` words each kind). Exit codes: 0 ok, 1 error (no
server, refused, remote error), 2 usage (a wrong option, or data that is not
JSON), 3 timeout.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import sys
from typing import Any, TextIO

from ..errors import ConnectionClosedError, IPCError, RemoteError

__all__ = (
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "CommandError",
    "Output",
    "clock",
    "error_message",
    "isatty",
    "report_error",
    "timestamp",
    "to_json",
)

PROG = "ipc-server"
"""The command's name, as it introduces its errors."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


def to_json(value: Any) -> str:
    """One compact JSON line; values JSON cannot hold (bytes, ext types) are shown, not lost."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(obj).hex()}
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def isatty(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for streams that cannot tell, or closed ones)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Where results go: JSON lines (not a terminal) or readable text (a terminal)."""

    def __init__(self, fmt: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        """The stream results are written to (stdout by default)."""
        self.json = fmt == "json" or (fmt == "auto" and not isatty(self.stream))
        """Whether results are JSON lines rather than text."""

    def emit(self, event: str, text: str, **fields: Any) -> None:
        """Write one result: ``{"event": event, **fields}`` as JSON, or ``text``."""
        line = to_json({"event": event, **fields}) if self.json else text
        self.stream.write(line + "\n")
        self.stream.flush()


def clock(now: _dt.datetime | None = None) -> str:
    """The time of day to the millisecond (``HH:MM:SS.mmm``), for log lines."""
    return (now or _dt.datetime.now()).strftime("%H:%M:%S.%f")[:-3]


def timestamp(now: _dt.datetime | None = None) -> str:
    """The local time in ISO 8601 to the millisecond, with its UTC offset, for JSON lines."""
    return (now or _dt.datetime.now()).astimezone().isoformat(timespec="milliseconds")


class CommandError(Exception):
    """A failure the command reports on stderr and turns into an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
        """The exit code of the command (EXIT_ERROR unless told)."""


def report_error(prog: str, message: str) -> None:
    """Write ``prog: error: message`` to stderr, on one line."""
    line = " ".join(message.split())
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)


def _os_text(exc: OSError) -> str:
    # The library's connect errors carry their whole sentence as strerror
    # (``[Errno 2] no IPC server at ...``): show the sentence, not the number.
    text = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def error_message(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for a failure the user can act on; None for a bug.

    Timeouts exit 3; a failure the command checked itself carries its code
    (``CommandError``); every other error of the library or of the OS exits 1.
    """
    if isinstance(exc, CommandError):
        return str(exc), exc.code
    if isinstance(exc, RemoteError):
        return f"the server's handler raised {exc}", EXIT_ERROR
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        text = _os_text(exc) if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "timed out" not in text:
            text = f"timed out: {text}" if text else "timed out"
        return text, EXIT_TIMEOUT
    if isinstance(exc, ConnectionClosedError):
        text = str(exc)
        return (text if "closed" in text else f"connection closed: {text}"), EXIT_ERROR
    if isinstance(exc, OSError):
        return _os_text(exc), EXIT_ERROR
    if isinstance(exc, IPCError):
        return f"{type(exc).__name__}: {exc}", EXIT_ERROR
    return None
