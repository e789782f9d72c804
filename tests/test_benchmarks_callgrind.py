"""benchmarks/callgrind.py reads callgrind's output format as valgrind documents it.

A small output file written by hand: two Python functions entered through
``-X perf`` trampolines (one also called recursively), the eval loop they
call, and an extension module's function.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.callgrind import TOTALS, category, function_costs, object_costs

PID = 4242

OUT = """\
version: 1
creator: callgrind-3.19.0
pid: 4242
positions: line
events: Ir
summary: 1415

ob=(1) /usr/lib/libpython3.12.so.1.0
fl=(1) ???
fn=(1) 0x0000000000001000
0 3
cfn=(2) _PyEval_EvalFrameDefault
calls=1 0
0 900
fn=(3) 0x0000000000002000
0 2
cfn=(2)
calls=2 0
0 250
fn=(4) 0x0000000000001000'2
0 1
cfn=(2)
calls=1 0
0 40
fn=(2)
0 380
cob=(2) /site-packages/orjson/orjson.cpython-312-x86_64-linux-gnu.so
cfn=(5) orjson_dumps
calls=4 0
0 600
ob=(2)
fn=(5)
0 600
ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(2) ???
fn=(6) memcpy
+2 429
"""

MAP = """\
1000 b py::Endpoint.request:/src/ipc_server/endpoint.py
2000 b py::Responder.__call__:/src/ipc_server/writes.py
"""


def test_totals_and_objects() -> None:
    match = TOTALS.search(OUT)
    assert match is not None
    assert int(match.group(1)) == 1415
    costs = object_costs(OUT)
    # self costs only: a call's inclusive cost line is not counted where it was made
    assert costs == {
        "/usr/lib/libpython3.12.so.1.0": 3 + 2 + 1 + 380,
        "/site-packages/orjson/orjson.cpython-312-x86_64-linux-gnu.so": 600,
        "/usr/lib/x86_64-linux-gnu/libc.so.6": 429,
    }
    assert sum(costs.values()) == 1415
    assert [category(name) for name in costs] == ["interpreter", "orjson", "libc"]


def test_python_functions_from_their_trampolines(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text(OUT, encoding="utf-8")
    (tmp_path / f"perf-{PID}.map").write_text(MAP, encoding="utf-8")
    costs = function_costs(out, PID, tmp_path)
    # inclusive: the calls the trampoline makes; its recursive instance ('2) is inside them
    assert costs == {
        "Endpoint.request:/src/ipc_server/endpoint.py": 900,
        "Responder.__call__:/src/ipc_server/writes.py": 250,
    }
