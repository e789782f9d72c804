"""Seeded generators for the fuzzers: valid packets, hostile values, and byte mutations.

Everything takes a ``random.Random`` so that a run is reproduced by its seed.
No I/O here; ``fuzz_decoder.py`` and ``fuzz_server.py`` drive it.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ipc_server.codecs import json_dumps
from ipc_server.packets import FEATURES
from ipc_server.protocol import encode_tag, frame, upgrade_request

__all__ = [
    "INTERESTING",
    "TOPICS",
    "connection_packet",
    "deep_value",
    "extension_packet",
    "hostile_body",
    "mutate",
    "preamble",
    "random_value",
    "valid_packet",
]

CONNECTION, MESSAGE, REQUEST, RESPONSE, PING, PONG, END = range(7)

TOPICS = ("alpha", "beta", "gamma", "", "δ", "x" * 200)
"""A small set of topics, so that the server's topic registry stays bounded."""

PATTERNS = ("alpha.*", "a.>", "*", ">", "a..b", "a.>.b", "a.*x")
"""Wildcard patterns, valid and not (the ``wildcards`` extension)."""

CALLED = ("svc", "svc.two", "nobody", "", "a b")
"""Services the fuzzer calls: the fuzzed server's own worker serves the first two."""

SERVED = ("fz", "x" * 60, "", "a b")
"""Services the fuzzer serves (valid and not): never called, since a fuzzing connection
never answers a call, and a call in flight holds a slot of its caller's."""

ODD_NUMBERS: tuple[Any, ...] = (
    None,
    -1,
    0,
    1,
    3,
    0.5,
    2**31,
    2**63 - 1,
    1e300,
    float("nan"),
    float("inf"),
    "1",
    [],
    {},
    True,
)
"""Values for the extension fields that carry a number (``dl``, ``w``, a credit)."""

INTERESTING: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b":",
    b",",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b'"\\ud800"',
    b"\\u0000",
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\xc0",  # msgpack nil
    b"\xc1",  # msgpack: never used
    b"\xdd\xff\xff\xff\xff",  # msgpack: array of 4 G elements
    b"\xdf\xff\xff\xff\xff",  # msgpack: map of 4 G pairs
    b"\xc6\xff\xff\xff\xff",  # msgpack: bin of 4 GB
    b"\xdb\xff\xff\xff\xff",  # msgpack: str of 4 GB
    b"\xd4\x00\x00",  # msgpack: fixext 1 type 0 (JS undefined)
    b"\xd7\xff" + b"\x00" * 8,  # msgpack: timestamp ext
    b"\xc7\x05\xff" + b"\x00" * 5,  # msgpack: bad timestamp ext
    b'{"t":',
    b'"n":',
    b'"d":',
)


def random_string(rng: random.Random) -> str:
    """A short string, sometimes with non-ASCII characters."""
    kind = rng.randrange(4)
    if kind == 0:
        return ""
    if kind == 1:
        return rng.choice(["a", "sub", "pub", "unsub", "message", "t", "n", "d", "e", "m", "a"])
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 12)))
    return rng.randbytes(rng.randrange(1, 24)).hex()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON/msgpack-encodable value of modest size (depth-limited)."""
    r = rng.random()
    if depth > 4 or r < 0.45:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                rng.randrange(-(2**63), 2**63),
                rng.random() * 1e6,
                random_string(rng),
                2**53 + 1,
            ]
        )
    if r < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def deep_value(depth: int) -> Any:
    """``[[[...None...]]]`` nested ``depth`` deep (built without recursion)."""
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def extension_packet(rng: random.Random, n: str) -> dict[str, Any]:
    """A packet of the extensions (SPEC 8): services, calls, streams, credits, cancel
    notices, deadlines, wildcards and worker groups; their number fields odd at times."""
    kind = rng.randrange(10)
    number = rng.choice(ODD_NUMBERS) if rng.random() < 0.5 else rng.choice([1.0, 5, 30.0])
    if kind == 0:
        return {
            "t": REQUEST,
            "d": rng.choice(SERVED),
            "n": n,
            "x": rng.choice(["serve", "unserve"]),
        }
    if kind in (1, 2):
        return {
            "t": REQUEST,
            "d": random_value(rng),
            "n": n,
            "x": "call",
            "s": rng.choice(CALLED),
            "dl": number,
        }
    if kind == 3:
        return {"t": REQUEST, "d": {"stream": True}, "n": n, "x": "stream", "w": number}
    if kind == 4:
        earlier = format(max(1, int(n, 16) - rng.randrange(1, 20)), "x")
        return {"t": MESSAGE, "d": number, "n": earlier, "x": "credit"}
    if kind == 5:
        earlier = format(max(1, int(n, 16) - rng.randrange(1, 20)), "x")
        return {"t": MESSAGE, "n": rng.choice([earlier, n, None, 7]), "x": "cancel"}
    if kind == 6:
        return {"t": REQUEST, "d": random_value(rng), "n": n, "dl": number}
    if kind == 7:
        return {"t": REQUEST, "d": rng.choice([False, True, number]), "n": n, "x": "stats"}
    what = rng.choice(["sub", "unsub"])
    topic = rng.choice([*PATTERNS, *TOPICS])
    d: dict[str, Any] = {what: topic}
    if kind == 8:
        d["group"] = rng.choice(["g", "", "g" * 300, None, 1])
    packet: dict[str, Any] = {"t": REQUEST, "d": d, "n": n}
    if rng.random() < 0.1:
        packet["x"] = rng.choice([None, "other"])  # an "x" the server does not know
    return packet


def valid_packet(rng: random.Random, nonce: int) -> dict[str, Any]:
    """A well-formed packet a client could send after the handshake (a third of them the
    extensions', which a connection that did not announce them sees as plain packets)."""
    n = format(nonce, "x")
    if rng.random() < 0.35:
        return extension_packet(rng, n)
    kind = rng.randrange(10)
    if kind < 3:
        return {"t": REQUEST, "d": random_value(rng), "n": n}
    if kind < 5:
        return {"t": PING, "d": random_value(rng), "n": n}
    if kind < 7:
        return {"t": MESSAGE, "d": random_value(rng)}
    topic: Any = rng.choice(TOPICS)
    if rng.random() < 0.3:
        topic = rng.sample(TOPICS, rng.randrange(1, 4))
    if kind == 7:
        return {"t": REQUEST, "d": {"sub": topic}, "n": n}
    if kind == 8:
        return {"t": REQUEST, "d": {"unsub": topic}, "n": n}
    return {"t": REQUEST, "d": {"pub": rng.choice(TOPICS), "message": random_value(rng)}, "n": n}


def hostile_body(rng: random.Random, max_size: int) -> bytes:
    """A body built to hurt: random bytes, wrong shapes, deep nesting, odd nonces, big sizes."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        depth = rng.choice([200, 255, 300, 600, 1023, 1100, 5000])
        return b'{"t":4,"n":"1","d":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 2:
        depth = rng.choice([300, 1000, 1100, 5000])
        return b"\x83\xa1t\x02\xa1n\xa11\xa1d" + b"\x91" * depth + b"\xc0"
    if kind == 3:
        t = rng.choice([-1, 7, 255, 2**40, None, "2", 2.0, True, [2]])
        return json_dumps({"t": t, "d": random_value(rng), "n": "1"})
    if kind == 4:
        t = rng.choice([REQUEST, RESPONSE, PING, PONG])
        if rng.random() < 0.2:  # a nonce nested too deep to echo back
            return b'{"t":%d,"d":1,"n":' % t + b"[" * 300 + b"]" * 300 + b"}"
        n = rng.choice([None, 1, 1.5, [1], {"a": 1}, True, "", "x" * 1000, deep_value(100)])
        return json_dumps({"t": t, "d": random_value(rng), "n": n})
    if kind == 5:
        return json_dumps(random_value(rng))  # valid JSON, not a packet
    if kind == 6:
        return json_dumps({"t": CONNECTION, "d": random_value(rng)})  # a second CONNECTION
    if kind == 7:
        return json_dumps({"t": END, "d": random_value(rng)})
    if kind == 8:
        size = rng.choice([1 << 10, 1 << 16, max_size // 2])
        return b'{"t":1,"d":"' + b"A" * size + b'"}'
    if kind == 9:
        d = {"pub": rng.choice(TOPICS), "message": deep_value(rng.choice([253, 254, 300]))}
        return _deep_pub(d)
    if kind == 10:
        return json_dumps(
            {"t": RESPONSE, "d": random_value(rng), "n": format(rng.randrange(50), "x")}
        )
    return b"\xef\xbb\xbf" + json_dumps({"t": PING, "d": 1, "n": "1"})  # a BOM


def _deep_pub(d: dict[str, Any]) -> bytes:
    # orjson refuses to *encode* past depth 254, so write the deep part by hand.
    depth = 0
    value = d["message"]
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    topic = json_dumps(d["pub"])
    inner = b"[" * depth + b"null" + b"]" * depth
    return b'{"t":2,"n":"1","d":{"pub":' + topic + b',"message":' + inner + b"}}"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to four random edits (flip, replace, insert, delete, splice, truncate)."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        if not buf:
            buf += rng.randbytes(rng.randrange(1, 8))
            continue
        i = rng.randrange(len(buf))
        op = rng.randrange(8)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.randrange(256)
        elif op == 2:
            buf[i:i] = rng.choice(INTERESTING)
        elif op == 3:
            del buf[i : i + rng.randrange(1, 9)]
        elif op == 4:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j : j + rng.randrange(1, 17)]
        elif op == 5:
            del buf[i:]
        elif op == 6:
            buf[i:i] = rng.randbytes(rng.randrange(1, 17))
        else:
            j = rng.randrange(len(buf))
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf)


def connection_packet(rng: random.Random, *, messagepack: bool, compress: bool) -> bytes:
    """A CONNECTION body, usually well-formed, sometimes with odd field values."""
    d: dict[str, Any] = {
        "id": rng.choice([None, None, "fz" + rng.randbytes(4).hex(), 7, "", [1]]),
        "extras": random_value(rng),
        "compress": compress,
        "messagepack": messagepack,
    }
    r = rng.random()
    if r < 0.5:
        d["features"] = list(FEATURES)  # every extension: what our own clients announce
    elif r < 0.65:
        d["features"] = rng.choice([["errors"], "errors", [[]], None, ["x"] * 50])
    return json_dumps({"t": CONNECTION, "d": d})


def preamble(rng: random.Random) -> bytes:
    """The first bytes of a connection: valid, mutated, truncated or foreign."""
    kind = rng.randrange(9)
    hello = frame(connection_packet(rng, messagepack=False, compress=False))
    if kind == 0:
        return b"IPC" + hello
    if kind == 1:
        return mutate(b"IPC" + hello, rng)
    if kind == 2:
        return upgrade_request("localhost", rng.choice(["net-ipc", "isdk-ipc"])) + hello
    if kind == 3:
        return mutate(upgrade_request("localhost", "net-ipc"), rng) + hello
    if kind == 4:
        token = rng.choice(["websocket", "", "NET-IPC", "net-ipc2", "h2c"])
        return f"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: {token}\r\n\r\n".encode()
    if kind == 5:
        return b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * rng.choice([100, 5000, 9000]) + b"\r\n"
    if kind == 6:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 7:
        # A packet other than CONNECTION first.
        return b"IPC" + frame(json_dumps({"t": rng.randrange(1, 7), "d": 1, "n": "1"}))
    # Oversized or overlong tag straight after the preamble.
    return b"IPC" + rng.choice([encode_tag(1 << 40), b"\x00" * 9, encode_tag(1 << 30)[:3]])


def report(summary: dict[str, Any], as_json: bool) -> int:
    """Print a run's summary (one JSON line, or ``key: value`` lines); the exit code."""
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0 if summary["ok"] else 1
