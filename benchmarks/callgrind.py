"""Reading valgrind's callgrind output: totals, costs per object file, costs per Python function.

The format is documented with valgrind (``docs/cl-format.html``). Cost lines
belong to the function (``fn=``) and object (``ob=``) named last; the cost
line after a ``calls=`` line is the inclusive cost of a call the current
function makes. Names are compressed: ``(id) name`` the first time (in
``fn=``/``cfn=``, ``ob=``/``cob=``), ``(id)`` after.

Costs per Python function need Python 3.12 or later run as ``python -X
perf``: it then enters every Python function through a small trampoline of
its own and writes where each lies to ``/tmp/perf-<pid>.map``. Under
callgrind each trampoline is a function of its own, so what a Python
function costs with everything it calls (its inclusive cost) is the cost of
the calls its trampoline makes. A function called recursively appears a
second time as ``name'2``; its cost is already inside the first instance's
calls, so only the first instance counts.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

__all__ = [
    "CATEGORIES",
    "TOTALS",
    "category",
    "function_costs",
    "object_costs",
    "perf_map",
]

TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
"""The run's instruction total, in a callgrind output file."""

_NAMED = re.compile(r"\((\d+)\)(?: (.*))?")
_TRAMPOLINE = re.compile(r"0x([0-9a-f]+)")


def object_costs(text: str) -> dict[str, int]:
    """Instructions (self cost) per object file, from one callgrind output file.

    Costs belong to the object of the last ``ob=`` line; the cost line after a
    ``calls=`` line is the call's inclusive cost, counted where it was spent.
    Object names are compressed: ``(id) name`` the first time (in ``ob=`` or
    ``cob=``), ``(id)`` after.
    """
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = "???"
    after_call = False
    for line in text.splitlines():
        first = line[:1]
        if first.isdigit() or first in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) > 1:
                costs[current] = costs.get(current, 0) + int(parts[1])
        elif line.startswith(("ob=", "cob=")):
            match = _NAMED.match(line, line.index("=") + 1)
            if match is None:
                name = line[line.index("=") + 1 :]
            else:
                if match.group(2):
                    names[match.group(1)] = match.group(2)
                name = names.get(match.group(1), f"object ({match.group(1)})")
            if first == "o":
                current = name
        elif line.startswith("calls="):
            after_call = True
    return costs


CATEGORIES = ("interpreter", "orjson", "uvloop", "libzmq", "pyzmq", "libc", "ipc_server", "other")


def category(obj: str) -> str:
    """What an object file is, for the split: one of CATEGORIES."""
    base = os.path.basename(obj)
    if base.startswith("libpython") or re.fullmatch(r"python[0-9.]*", base):
        return "interpreter"
    if "/lib-dynload/" in obj:  # the standard library's C modules: _asyncio, _struct, ...
        return "interpreter"
    if "/orjson/" in obj:
        return "orjson"
    if "/uvloop/" in obj:
        return "uvloop"
    if base.startswith("libzmq"):
        return "libzmq"
    if "/zmq/" in obj:  # pyzmq's own extension (its Cython binding)
        return "pyzmq"
    if base.startswith(("libc.so", "libc-")):
        return "libc"
    if "/ipc_server/" in obj or "__mypyc" in base:  # the compiled core (--installed)
        return "ipc_server"
    return "other"


def perf_map(pid: int, folder: Path = Path("/tmp")) -> dict[int, str]:
    """Trampoline address -> ``qualified name:file`` of the Python function it enters."""
    names: dict[int, str] = {}
    with open(folder / f"perf-{pid}.map", encoding="utf-8") as lines:
        for line in lines:
            address, _size, name = line.rstrip("\n").split(" ", 2)
            names[int(address, 16)] = name.removeprefix("py::")
    return names


def function_costs(callgrind_out: Path, pid: int, folder: Path = Path("/tmp")) -> dict[str, int]:
    """Instructions of each Python function of a ``-X perf`` run, with what it called
    (``folder``: where the run wrote its perf map)."""
    names = perf_map(pid, folder)
    ids: dict[str, str] = {}
    costs: defaultdict[str, int] = defaultdict(int)
    function = ""
    in_call = False
    with open(callgrind_out, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if in_call:
                    costs[function] += int(line.split()[-1])
                    in_call = False
            elif line.startswith("calls="):
                in_call = True
            elif line.startswith(("fn=", "cfn=")):
                match = _NAMED.match(line, line.index("=") + 1)
                if match is None:
                    continue
                key, name = match.groups()
                if name:
                    ids[key] = name.rstrip("\n")
                if first == "f":
                    function = ids.get(key, "")
    by_name: defaultdict[str, int] = defaultdict(int)
    for trampoline, cost in costs.items():
        match = _TRAMPOLINE.fullmatch(trampoline)
        if match is not None:
            name = names.get(int(match.group(1), 16))
            if name is not None:
                by_name[name] += cost
    return dict(by_name)
