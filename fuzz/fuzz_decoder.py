"""Fuzz the sans-I/O core: FrameDecoder, PacketCodec, ServerPreamble, ClientPreamble.

A seeded mutation loop (no dependency). Properties checked on every case:

- ``FrameDecoder`` gives the same bodies (and the same refusal) however the
  stream is split: all at once, in random chunks, one byte at a time; and the
  bodies are what the SPEC 6.2 tag grammar says.
- ``PacketCodec.decode`` raises nothing but ``ProtocolError`` (with
  ``MessageTooLargeError``), in JSON, msgpack and compressed modes; what it
  returns has an int type in 0..6.
- ``ServerPreamble`` gives the same verdict however the bytes are split and
  never raises; ``ClientPreamble`` raises only ``ProtocolError``.
- A valid packet survives encode -> frame -> decode unchanged.

Usage::

    python fuzz/fuzz_decoder.py --seconds 60 --seed 1
    python fuzz/fuzz_decoder.py --cases 1000000 --json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from typing import Any

import msgpack
from corpus import hostile_body, mutate, preamble, random_value, report, valid_packet

from ipc_server.codecs import PacketCodec, json_dumps
from ipc_server.errors import ProtocolError
from ipc_server.protocol import ClientPreamble, FrameDecoder, ServerPreamble, frame

MAX_TAG_BYTES = 8


def reference_frames(stream: bytes, max_size: int) -> tuple[list[bytes], bool]:
    """The bodies SPEC 6.2 reads from ``stream``, and whether a tag is refused.

    A tag is refused when it announces more than ``max_size`` (as soon as its
    first digits say so) or runs longer than 8 digits.
    """
    bodies: list[bytes] = []
    pos = 0
    while pos < len(stream):
        length = 0
        i = pos
        while True:
            if i >= len(stream):
                return bodies, False
            byte = stream[i]
            i += 1
            if byte & 0x80:
                length = (length << 7) | (byte & 0x7F)
                break
            length = (length << 7) | byte
            if (length << 7) > max_size or i - pos >= MAX_TAG_BYTES:
                return bodies, True
        if length > max_size:
            return bodies, True
        if i + length > len(stream):
            return bodies, False
        bodies.append(stream[i : i + length])
        pos = i + length
    return bodies, False


def split_feed(stream: bytes, cuts: list[int], max_size: int) -> tuple[list[bytes], bool]:
    """Feed ``stream`` cut at ``cuts``; the bodies out, and whether it refused a tag."""
    decoder = FrameDecoder(max_size)
    out: list[bytes] = []
    start = 0
    for end in [*cuts, len(stream)]:
        try:
            out.extend(bytes(b) for b in decoder.feed(stream[start:end]))
        except ProtocolError:  # MessageTooLargeError, or a tag longer than 8 digits
            return out, True
        start = end
    return out, False


class Run:
    """One fuzzing run: counters and the first unexpected outcomes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cases = 0
        self.unexpected: list[str] = []
        self.kinds: dict[str, int] = {}

    def fail(self, what: str) -> None:
        """Record a property violation (the first 20 are kept)."""
        if len(self.unexpected) < 20:
            self.unexpected.append(what[:500])

    def stream(self) -> tuple[bytes, int]:
        """A byte stream of frames (some hostile, some mutated as a whole) and a size limit."""
        rng = self.rng
        max_size = rng.choice([16, 300, 4096, 1 << 20])
        parts = []
        for i in range(rng.randrange(0, 12)):
            if rng.random() < 0.7:
                body = json_dumps(valid_packet(rng, i))
            else:
                body = hostile_body(rng, 4096)
            parts.append(frame(body))
        if rng.random() < 0.05:
            # A body big enough for the decoder's preallocating path (64 KiB and up).
            parts.insert(
                rng.randrange(len(parts) + 1), frame(rng.randbytes(rng.randrange(65536, 200_000)))
            )
            max_size = 1 << 20
        stream = b"".join(parts)
        if rng.random() < 0.5:
            stream = mutate(stream, rng)
        return stream, max_size

    def check_frames(self) -> None:
        """Same bodies however the stream is split, matching the reference grammar."""
        rng = self.rng
        stream, max_size = self.stream()
        expected, refused = reference_frames(stream, max_size)
        whole_decoder = FrameDecoder(max_size)
        try:
            whole = [bytes(b) for b in whole_decoder.feed(stream)]
            whole_refused = False
        except ProtocolError:
            whole, whole_refused = [], True
        except Exception as exc:
            self.fail(f"FrameDecoder raised {exc!r} on {stream[:80]!r}")
            return
        if whole_refused != refused or (not refused and whole != expected):
            self.fail(f"whole feed differs from the grammar: {stream[:80]!r} max={max_size}")
        ncuts = rng.randrange(0, 8)
        cuts = sorted(rng.randrange(0, len(stream) + 1) for _ in range(ncuts))
        for name, pieces in (
            ("chunks", cuts),
            ("bytes", list(range(1, len(stream))) if len(stream) < 600 else cuts),
        ):
            try:
                got, got_refused = split_feed(stream, pieces, max_size)
            except Exception as exc:
                self.fail(f"FrameDecoder ({name}) raised {exc!r} on {stream[:80]!r}")
                continue
            # On a refusal, bodies completed earlier in the refused chunk are not
            # returned (the connection is dropped anyway): a prefix is expected.
            same = got == expected if not refused else got == expected[: len(got)]
            if not same or got_refused != refused:
                self.fail(f"{name} feed differs: {stream[:80]!r} max={max_size}")

    def check_codec(self) -> None:
        """decode() raises only ProtocolError and returns a packet with a valid type."""
        rng = self.rng
        messagepack = rng.random() < 0.4
        compress = rng.random() < 0.3
        limit = rng.choice([64, 4096, 1 << 20])
        codec = PacketCodec(limit)
        codec.configure(messagepack=messagepack, compress=compress)
        sender = PacketCodec(1 << 30)
        sender.configure(messagepack=messagepack, compress=compress)
        for i in range(rng.randrange(1, 6)):
            packet = valid_packet(rng, i)
            if rng.random() < 0.5:
                body = sender.encode_body(packet)
            elif compress:
                raw = hostile_body(rng, 4096)
                deflate = zlib.compressobj(wbits=-15)
                body = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
            elif messagepack:
                body = msgpack.packb(random_value(rng)) if rng.random() < 0.3 else b""
                body = body or mutate(sender.encode_body(packet), rng)
            else:
                body = hostile_body(rng, 4096)
            if rng.random() < 0.4:
                body = mutate(body, rng)
            try:
                t, _, _, decoded = codec.decode(body)
            except ProtocolError:
                if compress:
                    return  # a broken deflate stream ends the connection
                continue
            except Exception as exc:
                self.fail(f"decode raised {exc!r} on {body[:80]!r} mp={messagepack} z={compress}")
                return
            if type(t) is not int or not 0 <= t <= 6 or type(decoded) is not dict:
                self.fail(f"decode returned t={t!r} for {body[:80]!r}")

    def check_roundtrip(self) -> None:
        """A valid packet comes back unchanged through encode, frame, decode."""
        rng = self.rng
        messagepack = rng.random() < 0.5
        compress = rng.random() < 0.5
        a = PacketCodec()
        b = PacketCodec()
        a.configure(messagepack=messagepack, compress=compress)
        b.configure(messagepack=messagepack, compress=compress)
        decoder = FrameDecoder()
        packets = [valid_packet(rng, i) for i in range(rng.randrange(1, 8))]
        stream = b"".join(frame(a.encode_body(p)) for p in packets)
        for p, body in zip(packets, decoder.feed(stream), strict=True):
            _, _, _, got = b.decode(body)
            if got != p and json_dumps(got) != json_dumps(p):
                self.fail(f"round trip changed {p!r} into {got!r}")

    def check_preamble(self) -> None:
        """Same verdict however the preamble is split; only ProtocolError from the client side."""
        rng = self.rng
        data = preamble(rng)
        if rng.random() < 0.3:
            data = mutate(data, rng)
        verdicts = []
        for step in (len(data) or 1, 1, rng.randrange(1, 16)):
            parser = ServerPreamble()
            verdict: Any = None
            try:
                for i in range(0, max(len(data), 1), step):
                    verdict = parser.feed(data[i : i + step])
                    if verdict is not None:
                        break
            except Exception as exc:
                self.fail(f"ServerPreamble raised {exc!r} on {data[:80]!r}")
                return
            if verdict is not None:
                verdict = (verdict.accepted, verdict.consumed, verdict.reply, verdict.token)
            verdicts.append(verdict)
        if verdicts[1:] != verdicts[:-1]:
            # A refusal can come earlier with fewer bytes seen (e.g. "IPX"); the accepted
            # verdicts must agree exactly.
            accepted = {v for v in verdicts if v is not None and v[0]}
            if len(accepted) > 1 or (
                accepted and len({v is not None and v[0] for v in verdicts}) > 1
            ):
                self.fail(f"ServerPreamble verdict depends on the split: {data[:80]!r} {verdicts}")
        client = ClientPreamble()
        answer = mutate(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: net-ipc\r\n\r\n", rng)
        try:
            client.feed(answer)
        except ProtocolError:
            pass
        except Exception as exc:
            self.fail(f"ClientPreamble raised {exc!r} on {answer!r}")

    def one(self) -> None:
        """Run one case of a randomly chosen kind."""
        checks = (self.check_frames, self.check_codec, self.check_roundtrip, self.check_preamble)
        check = self.rng.choice(checks)
        self.kinds[check.__name__] = self.kinds.get(check.__name__, 0) + 1
        check()
        self.cases += 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 0 when no property was violated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    parser.add_argument(
        "--cases", type=int, default=0, help="stop after this many cases (0: no limit)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    run = Run(args.seed)
    started = time.monotonic()
    deadline = started + args.seconds
    while time.monotonic() < deadline and (not args.cases or run.cases < args.cases):
        for _ in range(100):
            run.one()
    summary = {
        "ok": not run.unexpected,
        "seed": args.seed,
        "cases": run.cases,
        "kinds": run.kinds,
        "seconds": round(time.monotonic() - started, 2),
        "unexpected": run.unexpected,
    }
    return report(summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
