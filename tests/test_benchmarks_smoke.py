"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs and gives numbers.

It checks that every selected system ran every workload it claims and produced
finite figures; it never checks a timing.  The `ours` case passes only once the
library implements the the public API.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ipc_server
from backplane.broker import nats_server_binary

REPO = Path(__file__).resolve().parent.parent
SUITE_TIMEOUT = 45  # seconds for the whole quick run of one case


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _node_ready() -> bool:
    return shutil.which("node") is not None and (REPO / "node_modules" / "net-ipc").is_dir()


def run_quick(systems: list[str], tmp_path: Path) -> dict[str, Any]:
    results = tmp_path / "results.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--runs",
        "1",
        "--deadline",
        "15",
        "--only",
        ",".join(systems),
        "--results-file",
        str(results),
    ]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=SUITE_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
    return data


def check_every_cell(data: dict[str, Any], systems: list[str]) -> None:
    assert data["systems"] == [s for s in data["systems"] if s in systems]
    assert sorted(data["systems"]) == sorted(systems)
    table: dict[str, dict[str, dict[str, Any]]] = data["table"]
    assert table, "no metric was measured"
    problems: list[str] = []
    for system in systems:
        measured = 0
        for metric, row in table.items():
            cell = row[system]
            if cell["status"] == "n/a":
                assert cell["note"], f"{system} {metric}: n/a without a reason"
                continue
            if cell["status"] != "ok":
                problems.append(f"{system} {metric}: {cell['status']}: {cell['note']}")
                continue
            value = cell["median"]
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                problems.append(f"{system} {metric}: not a number: {value!r}")
            measured += 1
        if measured == 0:
            problems.append(f"{system}: no figure at all")
    assert not problems, "\n".join(problems)


BASELINES = ["floor-asyncio", "mpconn"]
if _has("uvloop"):
    BASELINES.append("floor-uvloop")
if _has("zmq"):
    BASELINES.append("pyzmq")
    if _has("uvloop"):
        BASELINES.append("pyzmq-asyncio")

OURS = ["ours", "ours-sync", "ours-msgpack"]
if _has("uvloop"):
    OURS.insert(0, "ours-uvloop")


def run_module(module: str, *args: str) -> str:
    """The output of ``python -m module *args`` run from the repository (it must succeed)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=True,
    ).stdout


NOT_OURS = pytest.mark.skipif(
    ipc_server.compiled,
    reason="the baselines do not use this library: run once, in the pure build's pass",
)


@NOT_OURS
def test_quick_baselines(tmp_path: Path) -> None:
    check_every_cell(run_quick(BASELINES, tmp_path), BASELINES)


@NOT_OURS
@pytest.mark.skipif(not _node_ready(), reason="node or node_modules/net-ipc missing (npm ci)")
def test_quick_netipc(tmp_path: Path) -> None:
    systems = ["netipc-json", "netipc-msgpack"]
    check_every_cell(run_quick(systems, tmp_path), systems)


def test_quick_ours(tmp_path: Path) -> None:
    check_every_cell(run_quick(OURS, tmp_path), OURS)


@pytest.mark.skipif(not _has("uvloop"), reason="uvloop is not installed")
def test_patterns_quick_runs() -> None:
    """`python -m benchmarks.patterns --quick` measures every row (no timing is checked)."""
    out = run_module("benchmarks.patterns", "--quick")
    for row in (
        "publish, 10,000 exact",
        "call() round trip",
        "stream(), 16 KiB items, window 1024",
    ):
        assert row in out


@pytest.mark.skipif(
    not _has("nats") or nats_server_binary() is None, reason="needs nats-py and nats-server"
)
@pytest.mark.skipif(sys.platform == "win32", reason="its bare line uses Unix sockets")
def test_backplane_round_trip_quick_runs() -> None:
    """`python -m benchmarks.backplane --only rtt --quick` gives every line, taking turns."""
    out = run_module("benchmarks.backplane", "--only", "rtt", "--quick", "--rounds", "3")
    for line in ("ours p50", "raw  p50", "local p50", "bare p50", "target: raw + local"):
        assert line in out
    # which build ran, and from where: this checkout's source
    assert f"ipc_server: pure Python, from {Path(__file__).resolve().parent.parent / 'src'}" in out
    if sys.platform == "linux":  # the CPU comes from /proc
        for name in ("ours", "raw", "local", "bare"):
            assert f"CPU per round trip, {name}" in out
