"""What is measured: workloads, their sizes, the payload, the metrics and the systems.

Everything here is plain data shared by the runner (parent process) and the
workers (server and client processes), so it must stay cheap to import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

WORKLOADS: tuple[str, ...] = (
    "seq_rtt",
    "pipelined",
    "gather_async",
    "gather_plain",
    "oneway",
    "fanout",
    "big",
    "connections",
)
GATHER = ("gather_async", "gather_plain")

# The ~200-byte JSON-like dict carried by every workload except `big` (212 bytes as JSON).
PAYLOAD: dict[str, Any] = {
    "id": 123456,
    "method": "user.update",
    "params": {
        "user_id": 987654321,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "roles": ["admin", "editor"],
        "active": True,
    },
    "meta": {"trace": "4bf92f3577b34da6", "ts": 1732540800.123},
}

TOPIC = "t"

MICRO = "\u00b5"  # the micro sign, spelled out so the source stays ASCII
DASH = "\u2013"  # en dash for ranges
TIMES = "\u00d7"  # multiplication sign for ratios


@dataclass(frozen=True)
class Params:
    """Sizes of every workload; the same object is handed to servers and clients."""

    seq_n: int = 20_000  # seq_rtt: timed round trips
    seq_warmup: int = 1_000
    pipe_total: int = 200_000  # pipelined: requests in all
    pipe_window: int = 1_000  # pipelined: requests in flight
    pipe_warmup: int = 2_000
    gather_batch: int = 1_000  # gather_*: requests per gather (one batch)
    gather_total: int = 200_000  # gather_*: requests in all
    gather_warmup: int = 2_000
    oneway_n: int = 500_000  # oneway: sends
    oneway_warmup: int = 2_000
    fanout_subs: int = 10  # fanout: subscribers
    fanout_n: int = 50_000  # fanout: publishes
    big_size: int = 16 * 1024 * 1024  # big: payload bytes
    big_n: int = 20  # big: round trips
    big_budget_s: float = 15.0  # big: stop early after this long (at least 2 round trips)
    conn_n: int = 1_000  # connections: idle clients
    conn_batch: int = 50  # connections opened concurrently (stays under listen backlogs)
    deadline_s: float = 240.0  # every worker process exits by itself after this

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Params:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


FULL = Params()
QUICK = Params(
    seq_n=300,
    seq_warmup=50,
    pipe_total=2_000,
    pipe_window=100,
    pipe_warmup=200,
    gather_batch=100,
    gather_total=2_000,
    gather_warmup=200,
    oneway_n=5_000,
    oneway_warmup=200,
    fanout_subs=10,
    fanout_n=200,
    big_size=1024 * 1024,
    big_n=3,
    conn_n=50,
    conn_batch=25,
    deadline_s=40.0,
)


@dataclass(frozen=True)
class Metric:
    key: str  # column / row id
    workload: str
    field: str  # key in the client's result dict
    title: str
    unit: str
    higher_is_better: bool


METRICS: tuple[Metric, ...] = (
    Metric("seq_rtt_p50", "seq_rtt", "p50_us", "seq_rtt median", f"{MICRO}s", False),
    Metric("seq_rtt_p99", "seq_rtt", "p99_us", "seq_rtt p99", f"{MICRO}s", False),
    Metric("pipelined", "pipelined", "rate", "pipelined", "req/s", True),
    Metric("gather_async", "gather_async", "rate", "gather_async", "req/s", True),
    Metric("gather_plain", "gather_plain", "rate", "gather_plain", "req/s", True),
    Metric("oneway", "oneway", "rate", "oneway", "msg/s", True),
    Metric("fanout", "fanout", "rate", "fanout", "deliveries/s", True),
    Metric("big", "big", "mb_per_s", "big", "MB/s", True),
    Metric("connections", "connections", "kib_per_conn", "connections", "KiB/conn", False),
)


Kind = Literal["python", "node"]


@dataclass(frozen=True)
class System:
    """One column of the results.

    `impl` names a module in `benchmarks.impl` (Python) or a mode of the Node
    script; `options` are handed to it.  `na` gives, for each workload the
    system does not run, the reason shown in the notes.  A `compiled` system
    runs ipc_server's compiled core, as installed for the runner's
    `--compiled PYTHON`, instead of this checkout's `src/`.
    """

    name: str
    kind: Kind
    impl: str
    description: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    na: dict[str, str] = dataclasses.field(default_factory=dict)
    compiled: bool = False

    def runs(self, workload: str) -> bool:
        return workload not in self.na


def _only(workloads: tuple[str, ...], reason: str) -> dict[str, str]:
    return {w: reason for w in WORKLOADS if w not in workloads}


SYSTEMS: tuple[System, ...] = (
    System(
        "ours-uvloop",
        "python",
        "ours",
        "ipc_server asyncio client and server, both on uvloop, JSON codec",
        {"uvloop": True},
    ),
    System(
        "ours",
        "python",
        "ours",
        "ipc_server asyncio client and server, both on the default asyncio loop, JSON codec",
        {"uvloop": False},
    ),
    System(
        "ours-sync",
        "python",
        "ours",
        "blocking client ipc_server.sync.IPCClient against the asyncio server on uvloop",
        {"uvloop": True, "client": "sync"},
        _only(("seq_rtt",), "the blocking client is measured for seq_rtt only"),
    ),
    System(
        "ours-msgpack",
        "python",
        "ours",
        'ipc_server on uvloop, client codec="msgpack" (bytes travel as msgpack bin)',
        {"uvloop": True, "codec": "msgpack"},
        _only(("big",), "the msgpack codec is measured for big only"),
    ),
    System(
        "ours-uvloop-compiled",
        "python",
        "ours",
        "ours-uvloop on the compiled core (IPC_SERVER_COMPILE=1 pip install ., --compiled)",
        {"uvloop": True},
        compiled=True,
    ),
    System(
        "ours-sync-compiled",
        "python",
        "ours",
        "ours-sync on the compiled core (--compiled)",
        {"uvloop": True, "client": "sync"},
        _only(("seq_rtt",), "the blocking client is measured for seq_rtt only"),
        compiled=True,
    ),
    System(
        "floor-uvloop",
        "python",
        "floor",
        "bare asyncio.Protocol, 4-byte length prefix + orjson bodies, on uvloop",
        {"uvloop": True},
    ),
    System(
        "floor-asyncio",
        "python",
        "floor",
        "bare asyncio.Protocol, 4-byte length prefix + orjson bodies, default loop",
        {"uvloop": False},
    ),
    System(
        "pyzmq",
        "python",
        "zmq_impl",
        "pyzmq over ipc://, blocking sockets, orjson bodies (REQ/REP, DEALER/ROUTER, "
        "PUSH/PULL, XPUB/SUB)",
    ),
    System(
        "pyzmq-asyncio",
        "python",
        "zmq_impl",
        "pyzmq with zmq.asyncio on uvloop, both ends, DEALER/ROUTER over ipc://, orjson bodies",
        {"asyncio": True, "uvloop": True},
        _only(GATHER, "zmq.asyncio is measured for the gather workloads only"),
    ),
    System(
        "mpconn",
        "python",
        "mpconn",
        "multiprocessing.connection Listener/Client (AF_UNIX), send_bytes/recv_bytes "
        "with orjson bodies",
        na={
            **dict.fromkeys(
                GATHER,
                "a blocking API: nothing to gather, and one thread cannot write a batch of "
                "requests before reading the replies without deadlocking on full socket "
                "buffers (pipelined uses a second thread for that)",
            ),
            "fanout": "no publish/subscribe in multiprocessing.connection",
            "connections": "Listener has no multiplexing server (one blocking "
            "accept()/recv per connection)",
        },
    ),
    System(
        "netipc-json",
        "node",
        "json",
        "Node net-ipc 2.2.2, server and client both Node processes, JSON bodies",
    ),
    System(
        "netipc-msgpack",
        "node",
        "msgpack",
        "Node net-ipc 2.2.2 with messagepack:true (msgpackr), server and client both Node",
    ),
)

SYSTEMS_BY_NAME: dict[str, System] = {s.name: s for s in SYSTEMS}

# Used for ratios when --reference is not given or has no figure for a metric.
REFERENCE_CHAIN: tuple[str, ...] = (
    "ours-uvloop",
    "ours",
    "ours-msgpack",
    "ours-sync",
    "floor-uvloop",
    "floor-asyncio",
)
