"""What a data argument means: JSON (checked to fit the wire), text with ``--string``, ``-`` stdin.

A data argument is JSON, parsed strictly: text that is not JSON is an error
unless the user said it is a string (``--string``). Values both codecs cannot
carry are refused before anything is sent: integers outside 64 bits (msgpack
and orjson hold ``-2**63`` to ``2**64 - 1``), and ``NaN`` / ``Infinity`` /
floats too big for a double (not JSON; the JSON codec would send ``null``).

``-`` reads standard input: the whole of it as one value (``request``), or one
value per line (``send``, ``publish``; blank lines are skipped).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

from .output import EXIT_USAGE, CommandError

__all__ = ("INT_MAX", "INT_MIN", "STDIN", "DataError", "parse_data", "read_all", "read_lines")

STDIN = "-"
"""The data argument that means "read standard input"."""

INT_MIN = -(2**63)
"""The smallest integer msgpack and the JSON codec can carry."""

INT_MAX = 2**64 - 1
"""The largest integer msgpack and the JSON codec can carry."""

_MAX_DIGITS = len(str(INT_MAX)) + 1  # no need to build a 4,000-digit int to refuse it


class DataError(CommandError):
    """A data argument (or a line of stdin) that is not what the command can send: exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_int(text: str) -> int:
    value = int(text) if len(text) <= _MAX_DIGITS else None
    if value is None or not INT_MIN <= value <= INT_MAX:
        raise DataError(
            f"the integer {_shorten(text)} does not fit in 64 bits (the wire carries "
            f"{INT_MIN} to {INT_MAX}); send it as a string: '\"{_shorten(text)}\"'"
        )
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise DataError(f"the number {_shorten(text)} is too big for a 64-bit float")
    return value


def _parse_constant(text: str) -> Any:
    raise DataError(f"{text} is not JSON (JSON has no NaN or Infinity)")


def parse_data(text: str, *, string: bool = False, what: str = "DATA") -> Any:
    """The value a data argument stands for: ``text`` itself with ``string``, else its JSON.

    Raises:
        DataError: ``text`` is not JSON (naming ``what`` and the ``--string`` way
            out), or holds a number the wire cannot carry.
    """
    if string:
        return text
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except json.JSONDecodeError as exc:
        hint = "; give --string to send text" if what != "--payload" else ""
        shown = _shorten(" ".join(text.split()))
        raise DataError(
            f"{what} {shown!r} is not JSON ({exc.msg} at column {exc.colno}){hint}"
        ) from None


def read_all(stream: TextIO | None = None, *, string: bool = False) -> Any:
    """All of stdin as one value (``--string``: the text, without its last line end)."""
    text = (stream if stream is not None else sys.stdin).read()
    if string:
        return text[:-1] if text.endswith("\n") else text
    if not text.strip():
        raise DataError("stdin is empty: nothing to send")
    return parse_data(text, what="stdin")


async def read_lines(stream: TextIO | None = None, *, string: bool = False) -> AsyncIterator[Any]:
    """One value per line of stdin, as it comes (blank lines skipped).

    Each line is read in a thread, so that the loop keeps serving the
    connection (pings, keepalive) while stdin is slow, as ``tail -f`` is.
    """
    source = stream if stream is not None else sys.stdin
    number = 0
    while True:
        line = await asyncio.to_thread(source.readline)
        if not line:
            return
        number += 1
        text = line.rstrip("\r\n")
        if text.strip():
            yield parse_data(text, string=string, what=f"stdin line {number}")
