"""`python -m benchmarks`: run every selected (system, workload) pair side by side."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.config import (
    DASH,
    FULL,
    METRICS,
    QUICK,
    SYSTEMS,
    SYSTEMS_BY_NAME,
    WORKLOADS,
    Params,
    System,
)
from benchmarks.procs import REPO, Outcome, raise_fd_limit, run_pair
from benchmarks.report import (
    Table,
    build_table,
    fmt_value,
    markdown_tables,
    pick_references,
    terminal_report,
    write_chart,
)

RESULTS_DIR = REPO / "benchmarks" / "results"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ipc_server against a bare asyncio floor, pyzmq, "
        "multiprocessing.connection and Node net-ipc; client and server in separate processes.",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement"
    )
    p.add_argument(
        "--runs", type=int, default=3, help="runs per cell; the cell is their median (3)"
    )
    p.add_argument(
        "--only",
        type=_csv,
        default=None,
        metavar="SYSTEM,...",
        help="systems to run: " + ", ".join(s.name for s in SYSTEMS),
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=None,
        metavar="WORKLOAD,...",
        help="workloads to run: " + ", ".join(WORKLOADS),
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="per-process deadline: a worker still running then exits (240; quick: 40)",
    )
    p.add_argument(
        "--python",
        default=None,
        metavar="PATH",
        help="interpreter of the Python workers (this one); it needs orjson and msgpack, "
        "and uvloop and pyzmq for the systems using them",
    )
    p.add_argument(
        "--compiled",
        default=None,
        metavar="PYTHON",
        help="interpreter with ipc_server's compiled core installed (IPC_SERVER_COMPILE=1 "
        "pip install . into a virtualenv): the *-compiled systems run on it, and run only then",
    )
    p.add_argument("--reference", default="ours-uvloop", help="ratio reference (ours-uvloop)")
    p.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md and .png")
    p.add_argument("--docs-dir", type=Path, default=REPO / "docs", help=argparse.SUPPRESS)
    p.add_argument(
        "--results-file",
        type=Path,
        default=None,
        help="raw JSON results path (default: benchmarks/results/<timestamp>.json)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="RESULTS.json",
        help="print (and with --write-docs, write) the report of earlier raw results; run nothing",
    )
    p.add_argument("--list", action="store_true", help="list systems and workloads, then exit")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    for name in args.only or []:
        if name not in SYSTEMS_BY_NAME:
            p.error(f"unknown system {name!r}; known: {', '.join(SYSTEMS_BY_NAME)}")
        if SYSTEMS_BY_NAME[name].compiled and args.compiled is None:
            p.error(f"{name} needs --compiled PYTHON (an interpreter with the compiled core)")
    for name in args.workloads or []:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return args


# ---------------------------------------------------------------------------
# machine and versions


def _run(cmd: list[str], timeout: float = 15.0) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> str | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return None


def load_average() -> str | None:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


# Run by the workers' interpreter: what they import, not what the runner has.
_PROBE = """
import importlib.metadata as m, importlib.util as u, json, platform, sys
def version(dist):
    try:
        return m.version(dist)
    except m.PackageNotFoundError:
        return None
info = {
    "python": platform.python_version(),
    "python_impl": platform.python_implementation(),
    "python_executable": sys.executable,
    "uvloop": version("uvloop"),
    "pyzmq": version("pyzmq"),
    "orjson": version("orjson"),
    "msgpack": version("msgpack"),
    "libzmq": None,
    "missing": [n for n in ("orjson", "msgpack", "uvloop", "zmq") if u.find_spec(n) is None],
}
try:
    import zmq
    info["libzmq"] = zmq.zmq_version()
except ImportError:
    pass
try:
    import ipc_server as i
    info["ipc_server"] = getattr(i, "__version__", None) or version("ipc-server") or "?"
    info["ipc_server_file"] = i.__file__
    info["ipc_server_compiled"] = bool(getattr(i, "compiled", False))
except Exception:
    info["ipc_server"] = "not importable"
print(json.dumps(info))
"""


def python_info(python: str, installed: bool = False) -> dict[str, Any]:
    """Versions as the workers see them (their interpreter, this checkout's src/ or,
    with `installed`, the package installed for that interpreter)."""
    from benchmarks.procs import child_env

    try:
        done = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(installed),
            cwd=REPO,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"{python}: cannot run it: {exc}") from None
    if done.returncode != 0:
        raise SystemExit(f"{python}: {done.stderr.strip().splitlines()[-1:]}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def machine_info(python: str, compiled: str | None = None) -> dict[str, Any]:
    from benchmarks.procs import NODE_SCRIPT

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory": _mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        **python_info(python),
    }
    node = shutil.which("node")
    info["node"] = _run([node, "--version"]) if node else None
    info["net-ipc"] = (
        _run([node, str(NODE_SCRIPT), json.dumps({"role": "versions"})]) if node else None
    )
    info["git"] = _run(["git", "describe", "--always", "--dirty"])
    if compiled is not None:  # the *-compiled systems' interpreter and package
        info["compiled"] = python_info(compiled, installed=True)
    return info


# ---------------------------------------------------------------------------
# docs


WORKLOAD_DOCS: dict[str, str] = {
    "seq_rtt": "one request in flight, {seq_n:,} timed round trips (after {seq_warmup:,} "
    "warm-up): median and p99 latency",
    "pipelined": "{pipe_window:,} requests in flight, {pipe_total:,} in all: requests/s",
    "gather_async": "batches of `asyncio.gather` of {gather_batch:,} `client.request()` calls, "
    "{gather_total:,} requests in all, against an `async def` handler that awaits `respond`: "
    "requests/s",
    "gather_plain": "the same batches against a plain-function handler: requests/s",
    "oneway": "{oneway_n:,} one-way sends, the server counts them; the clock stops when a "
    "final request confirms the count: messages/s",
    "fanout": "{fanout_subs} subscribers (one client process), {fanout_n:,} publishes by the "
    "server on one topic: deliveries/s (publishes x subscribers / time)",
    "big": "a {big_mib:g} MiB bytes payload echoed by request, {big_n} times: MB/s "
    "(10^6 bytes of payload per second, counted once per round trip)",
    "connections": "{conn_n:,} idle connected clients (opened {conn_batch} at a time): server "
    "RSS growth (VmRSS) per connection, after one warm connection",
}


NOTES = [
    "Client and server always run in separate processes, over a Unix socket in a fresh "
    "folder under /tmp. Each cell is the median of the runs, with min" + DASH + "max.",
    "Every payload except `big` is the same 212-byte (as JSON) dict; every system encodes "
    "and decodes it on both sides (orjson for the Python systems, JSON.stringify/parse or "
    "msgpackr for Node).",
    "`ours-*` use only the public API of docs/guide.md, with default options, as a user would: "
    '`server.on("request", lambda request, respond, connection: respond(request))` (a plain '
    "function handler; a coroutine handler costs one task per request on Python < 3.12), "
    "`await client.request(data)`, `await client.send(data)`, `client.subscribe`, "
    "`server.publish`. Pipelining is 1,000 coroutines each awaiting its requests in turn.",
    "gather_async and gather_plain are what users mostly write: `await asyncio.gather(*("
    "client.request(x) for x in items))`, one batch after the other, so each batch waits for "
    "its slowest reply. `ours-*` answer gather_async with "
    "`async def on_request(request, respond, connection): await respond(request)` and "
    "gather_plain with the plain function above. The floor's `request()` returns a future, "
    "so its gather makes no Task per request; its server has no handler layer and answers "
    "both the same way. pyzmq (blocking DEALER/ROUTER) sends a batch, then reads its "
    "replies; it has no handler layer either, so both columns are the same code. "
    "pyzmq-asyncio runs both ends on `zmq.asyncio` (uvloop): the client gathers request "
    "coroutines that each send and await a future resolved in order by a reader task, the "
    "server loops on `await recv_multipart()` / `await send_multipart()`. net-ipc awaits "
    "`Promise.all` of 1,000 `client.request()`, against "
    "`async (req, respond) => { await respond(req); }` (gather_async) or "
    "`(req, respond) => respond(req)` (gather_plain).",
    "`ours-sync` is the blocking client against the asyncio server on uvloop; `ours-msgpack` "
    'is `IPCClient(codec="msgpack")` against the same server on uvloop.',
    "The floor is a bare asyncio.BufferedProtocol (4-byte length prefix, one kind byte, "
    "orjson bodies): the loop reads into a buffer shared by all connections, every complete "
    "frame of a read is decoded in place, a cut frame moves to a per-connection buffer sized "
    "for it, and replies are coalesced into one write. Its client has the shape of any "
    "request/response API, the same as ours: `await request(obj)` resolves one future per "
    "request, `send(obj)` is one call per message that waits only over the high-water mark, "
    "and writes are coalesced the same way. It has no nonces, no packet wrapper and no "
    "events, so it bounds what an asyncio design with our API shape can reach. Its `big` "
    "frames carry raw bytes.",
    "pyzmq: REQ/REP (seq_rtt, big with copy=False), DEALER/ROUTER (pipelined), PUSH/PULL "
    "(oneway, count confirmed over a REQ/REP side channel), XPUB/SUB with unlimited "
    "high-water marks (fanout; the publisher waits until it has seen all subscriptions), "
    "ROUTER with one DEALER socket per client (connections).",
    "multiprocessing.connection uses send_bytes/recv_bytes with orjson bodies (no pickling). "
    "Blocking sockets cannot keep 1,000 requests in flight from one thread without "
    "deadlocking on full socket buffers, so its pipelined client sends from the main thread "
    "and receives on a second thread, a semaphore keeping the window.",
    "net-ipc: both ends are Node processes; requests use its default 10 s timeout (a timer "
    "per request, like ours), except `big` (no timeout). Fanout uses `server.broadcast`, "
    "awaited per message; there are no topics in net-ipc, so every connection is a "
    "subscriber. With JSON, a Buffer is sent as `{type, data: [numbers]}` and comes back as "
    "that object, not as a Buffer; `big` is measured anyway, and shows what that costs.",
    "connections: the client reads /proc/<server pid>/status VmRSS before and after opening "
    "the connections (0.3 s settle each time). The delta includes allocator slack; treat it "
    "as an estimate.",
    "Fanout, pipelined, gather_*, oneway and seq_rtt each run a warm-up first; big does one "
    "untimed round trip.",
]


def _busy(info: dict[str, Any]) -> str | None:
    """A warning when other work was running (1-minute load above half the cores)."""
    cores = info.get("usable_cores") or info.get("cores") or 1
    loads = [info.get("load_before"), info.get("load_after")]
    worst = max((float(x.split()[0]) for x in loads if x), default=0.0)
    if worst > cores / 2:
        return (
            f"The machine was busy during this run (1-minute load average up to {worst:.2f} "
            f"on {cores} cores): expect noisy figures."
        )
    return None


def write_docs(
    docs_dir: Path,
    table: Table,
    systems: Sequence[System],
    refs: dict[str, str],
    raw: dict[str, Any],
    params: Params,
    workloads: Sequence[str],
) -> tuple[Path, Path]:
    info: dict[str, Any] = raw["machine"]
    docs_dir.mkdir(parents=True, exist_ok=True)
    md_path = docs_dir / "benchmarks.md"
    png_path = docs_dir / "benchmarks.png"
    chart_ok = True
    try:
        write_chart(png_path, table, systems, refs)
    except ImportError:
        chart_ok = False
    lines: list[str] = []
    lines.append("# Benchmarks\n")
    lines.append(
        f"Generated on {info['date']} by `{raw['command']} --write-docs` (run it from the "
        "repository root; `npm ci` there first for the Node systems).\n"
    )
    busy = _busy(info)
    if busy:
        lines.append(f"**{busy}**\n")
    if raw["quick"]:
        lines.append("**Quick mode: tiny sizes, the figures below are not measurements.**\n")
    lines.append("## Machine\n")
    rows = [
        ("CPU", f"{info['cpu']} ({info['cores']} cores, {info['usable_cores']} usable)"),
        ("Memory", info.get("memory")),
        ("OS", info.get("os")),
        (
            "Load average (1/5/15 min)",
            f"{info.get('load_before') or 'n/a'} before, "
            f"{info.get('load_after') or 'n/a'} after the run",
        ),
        ("Python", f"{info['python_impl']} {info['python']}"),
        ("uvloop", info.get("uvloop")),
        ("pyzmq / libzmq", f"{info.get('pyzmq')} / {info.get('libzmq')}"),
        ("orjson / msgpack", f"{info.get('orjson')} / {info.get('msgpack')}"),
        ("Node / net-ipc", f"{info.get('node')} / {info.get('net-ipc')}"),
        ("ipc_server", f"{info.get('ipc_server')} (git {info.get('git') or 'n/a'})"),
    ]
    compiled = info.get("compiled")
    if compiled:  # the *-compiled systems: their own interpreter, the compiled core
        rows.append(
            ("compiled core", f"Python {compiled['python']} ({compiled['python_executable']})")
        )
    lines.append("| | |\n| --- | --- |")
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines.append("")
    lines.append("## Workloads\n")
    sizes = {**params.to_json(), "big_mib": params.big_size / 1024 / 1024}
    lines.append("| workload | what |\n| --- | --- |")
    lines += [f"| {w} | {WORKLOAD_DOCS[w].format(**sizes)} |" for w in workloads]
    lines.append("")
    lines.append("## Systems\n")
    lines.append("| system | what |\n| --- | --- |")
    lines += [f"| {s.name} | {s.description} |" for s in systems]
    lines.append("")
    lines.append("## Results\n")
    lines.append(markdown_tables(table, systems, refs))
    if chart_ok:
        lines.append("![Relative performance](benchmarks.png)\n")
    lines.append("## Notes\n")
    lines += [f"- {n}" for n in NOTES]
    cell_notes: list[str] = []
    for metric in METRICS:
        row = table.get(metric.key)
        if row is None or metric.key == "seq_rtt_p99":
            continue
        for s in systems:
            cell = row[s.name]
            if cell.status == "n/a":
                cell_notes.append(f"- {s.name}, {metric.workload}: n/a, {cell.note}.")
            elif cell.status == "error":
                cell_notes.append(f"- {s.name}, {metric.workload}: error, `{cell.note}`.")
            elif cell.note:
                cell_notes.append(f"- {s.name}, {metric.workload}: {cell.note}.")
    if cell_notes:
        lines.append("\nCells without a figure:\n")
        lines += cell_notes
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():
        # Hand-written: the targets, which are met, and what limits the others.
        lines.append("")
        lines.append(analysis.read_text(encoding="utf-8").rstrip())
    lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return md_path, png_path


# ---------------------------------------------------------------------------
# main


def _progress(run: int, runs: int, system: System, workload: str, outcome: Outcome) -> None:
    if outcome.ok:
        parts = []
        for m in METRICS:
            if m.workload == workload and m.field in outcome.result:
                parts.append(f"{m.field}={fmt_value(m, float(outcome.result[m.field]))}")
        text = " ".join(parts)
    else:
        text = f"error: {outcome.error}"
    print(
        f"[{run}/{runs}] {workload:<12} {system.name:<20} {outcome.wall_s:6.1f}s  {text}",
        file=sys.stderr,
        flush=True,
    )


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _command_line(args: argparse.Namespace) -> str:
    cmd = "python -m benchmarks" + (" --quick" if args.quick else "") + f" --runs {args.runs}"
    if args.only:
        cmd += " --only " + ",".join(args.only)
    if args.workloads:
        cmd += " --workloads " + ",".join(args.workloads)
    if args.python:
        cmd += f" --python {args.python}"
    if args.compiled:
        cmd += f" --compiled {args.compiled}"
    return cmd


def _measure(
    args: argparse.Namespace,
    params: Params,
    systems: list[System],
    workloads: list[str],
    python: str,
    compiled: str | None = None,
) -> dict[str, Any]:
    raise_fd_limit()
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every run's finally kills its children
    # and removes its socket folder (SIGKILL cannot: then PR_SET_PDEATHSIG does).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = load_average()
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    failed: set[tuple[str, str]] = set()
    for run in range(1, args.runs + 1):
        for workload in workloads:
            for system in systems:
                key = (system.name, workload)
                if not system.runs(workload) or key in failed:
                    continue  # a pair that failed once is not retried (it may be slow to fail)
                outcome = run_pair(system, workload, params, python, compiled)
                outcomes.setdefault(key, []).append(outcome)
                if not outcome.ok:
                    failed.add(key)
                _progress(run, args.runs, system, workload, outcome)
    info = machine_info(python, compiled)
    info["date"] = started.strftime("%Y-%m-%d %H:%M UTC")
    info["load_before"], info["load_after"] = load_before, load_average()
    return {
        "date": started.isoformat(),
        "command": _command_line(args),
        "quick": args.quick,
        "runs": args.runs,
        "params": params.to_json(),
        "machine": info,
        "systems": [s.name for s in systems],
        "workloads": workloads,
        "outcomes": [
            {"system": s, "workload": w, "runs": [o.to_json() for o in runs]}
            for (s, w), runs in outcomes.items()
        ],
    }


def _workers_python(python: str, systems: Sequence[System]) -> str:
    """The workers' interpreter, checked: it imports this checkout's ipc_server."""
    info = python_info(python)
    where = info.get("ipc_server_file")
    if where and not Path(where).resolve().is_relative_to(REPO / "src"):
        raise SystemExit(f"the workers would import ipc_server from {where}, not {REPO / 'src'}")
    if info["missing"] and any(s.kind == "python" for s in systems):
        print(
            f"warning: {info['python_executable']} (Python {info['python']}) lacks "
            f"{', '.join(info['missing'])}: the systems needing them will show errors "
            f"({info['python_executable']} -m pip install uvloop orjson msgpack pyzmq)",
            file=sys.stderr,
        )
    executable: str = info["python_executable"]
    return executable


def _selected(system: System, args: argparse.Namespace) -> bool:
    """``--only``'s systems; by default all, the *-compiled ones only with ``--compiled``."""
    if args.only is not None:
        return system.name in args.only
    return args.compiled is not None or not system.compiled


def _compiled_python(python: str) -> str:
    """The *-compiled systems' interpreter, checked: it imports the compiled core."""
    info = python_info(python, installed=True)
    if not info.get("ipc_server_compiled"):
        where = info.get("ipc_server_file") or info["ipc_server"]
        raise SystemExit(
            f"{python} does not run ipc_server's compiled core ({where}); "
            f"install it there with: IPC_SERVER_COMPILE=1 {python} -m pip install ."
        )
    executable: str = info["python_executable"]
    return executable


def _outcomes(raw: dict[str, Any]) -> dict[tuple[str, str], list[Outcome]]:
    return {
        (item["system"], item["workload"]): [
            Outcome(
                ok=r["ok"],
                result=r["result"],
                error=r["error"],
                wall_s=r["wall_s"],
                stderr_tail=r["stderr_tail"],
            )
            for r in item["runs"]
        ]
        for item in raw["outcomes"]
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        lists = {s.name: ",".join(w for w in WORKLOADS if s.runs(w)) for s in SYSTEMS}
        width = max(len(text) for text in lists.values())
        names = max(len(s.name) for s in SYSTEMS)
        for s in SYSTEMS:
            print(f"{s.name:<{names}} {lists[s.name]:<{width}} {s.description}")
        return 0
    if args.report is not None:  # re-render a earlier run's raw results
        raw: dict[str, Any] = json.loads(args.report.read_text(encoding="utf-8"))
        systems = [SYSTEMS_BY_NAME[n] for n in raw["systems"] if n in SYSTEMS_BY_NAME]
        workloads = [w for w in raw["workloads"] if w in WORKLOADS]
        params = Params.from_json(raw["params"])
    else:
        params = QUICK if args.quick else FULL
        if args.deadline is not None:
            params = dataclasses.replace(params, deadline_s=args.deadline)
        systems = [s for s in SYSTEMS if _selected(s, args)]
        workloads = [w for w in WORKLOADS if args.workloads is None or w in args.workloads]
        python = _workers_python(args.python or sys.executable, systems)
        compiled = None if args.compiled is None else _compiled_python(args.compiled)
        raw = _measure(args, params, systems, workloads, python, compiled)
    table = build_table(systems, workloads, _outcomes(raw))
    refs = pick_references(table, systems, args.reference)
    raw["references"] = refs
    raw["table"] = {k: {n: c.to_json() for n, c in row.items()} for k, row in table.items()}
    print(terminal_report(table, systems, refs))
    if args.report is None:
        stamp = dt.datetime.fromisoformat(raw["date"]).strftime("%Y%m%dT%H%M%SZ")
        results_file: Path = args.results_file or (
            RESULTS_DIR / f"{stamp}{'-quick' if args.quick else ''}.json"
        )
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(raw, indent=1), encoding="utf-8")
        print(f"raw results: {results_file}")
    if args.write_docs:
        md, png = write_docs(args.docs_dir, table, systems, refs, raw, params, workloads)
        print(f"wrote {md} and {png}")
    return 0
