"""Make docs/top.png: ``ipc-server top`` on a pseudo-terminal, over a server with traffic.

Starts ``ipc-server serve`` and a few clients that talk to it (requests at
different rates, subscribers, a publisher), runs ``ipc-server top`` on a
100x28 pseudo-terminal, reads its screen for a few refreshes, and draws the
last full frame with a monospace font (Pillow; DejaVu Sans Mono). Bold and
reverse video are drawn as the terminal shows them.

    python scripts/top_screenshot.py [docs/top.png]
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ipc_server import IPCClient  # noqa: E402

COLUMNS, LINES = 100, 28
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
FG, BG = (220, 220, 220), (24, 24, 28)


def screen(data: bytes, columns: int, lines: int) -> list[list[tuple[str, bool, bool]]]:
    """The screen after ``data``: cells of (character, bold, reverse); the ANSI subset top uses."""
    grid = [[(" ", False, False)] * columns for _ in range(lines)]
    row = col = 0
    bold = reverse = False
    text = data.decode(errors="replace")
    for match in re.finditer(r"\x1b\[([?0-9;]*)([A-Za-z])|([^\x1b])", text):
        params, final, char = match.groups()
        if char is not None:
            if char == "\r":
                col = 0
            elif char == "\n":
                row = min(row + 1, lines - 1)
            elif col < columns:
                grid[row][col] = (char, bold, reverse)
                col += 1
            continue
        if final == "H":
            row = col = 0
        elif final == "K" and params == "2":
            grid[row] = [(" ", False, False)] * columns
        elif final == "J":
            for r in range(row + 1, lines):
                grid[r] = [(" ", False, False)] * columns
        elif final == "m":
            for p in (params or "0").split(";"):
                if p in ("", "0"):
                    bold = reverse = False
                elif p == "1":
                    bold = True
                elif p == "7":
                    reverse = True
    return grid


def render(grid: list[list[tuple[str, bool, bool]]], out: Path) -> None:
    font = ImageFont.truetype(FONT, 15)
    bold_font = ImageFont.truetype(BOLD_FONT, 15)
    cw = int(font.getlength("M"))
    ch = 20
    pad = 12
    image = Image.new("RGB", (cw * len(grid[0]) + 2 * pad, ch * len(grid) + 2 * pad), BG)
    draw = ImageDraw.Draw(image)
    for r, cells in enumerate(grid):
        for c, (char, bold, reverse) in enumerate(cells):
            x, y = pad + c * cw, pad + r * ch
            fg, bg = (BG, FG) if reverse else (FG, BG)
            if reverse:
                draw.rectangle([x, y, x + cw, y + ch], fill=bg)
            if char != " ":
                draw.text((x, y + 1), char, font=bold_font if bold else font, fill=fg)
    image.save(out)


def traffic(path: str, stop: threading.Event) -> None:
    """Clients of different activity, in a thread of their own."""

    async def main() -> None:
        fast = await IPCClient(path=path).connect({"name": "worker-1"})
        slow = await IPCClient(path=path).connect({"name": "worker-2"})
        subs = [await IPCClient(path=path).connect({"name": f"sub-{i}"}) for i in range(3)]
        for i, sub in enumerate(subs):
            await sub.subscribe(["news", f"room-{i}"])
        idle = await IPCClient(path=path).connect({"name": "idle"})
        n = 0
        while not stop.is_set():
            n += 1
            await asyncio.gather(*(fast.request({"n": n, "pad": "x" * 200}) for _ in range(40)))
            if n % 5 == 0:
                await slow.request({"n": n})
                await fast.publish("news", {"headline": f"story {n}", "body": "y" * 500})
            await asyncio.sleep(0.02)
        for client in (fast, slow, idle, *subs):
            await client.close()

    asyncio.run(main())


def capture(path: str, seconds: float = 3.5) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:  # the child: top on the pseudo-terminal
        os.environ.update(COLUMNS=str(COLUMNS), LINES=str(LINES))
        os.execv(sys.executable, [sys.executable, "-m", "ipc_server", "top", "--path", path])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data += os.read(fd, 1 << 16)
    os.write(fd, b"q")
    os.waitpid(pid, 0)
    os.close(fd)
    return data


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "top.png"
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    path = os.path.join(folder, "app.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen(
        [sys.executable, "-m", "ipc_server", "serve", "--path", path, "--quiet"],
        stdout=subprocess.PIPE,
        env=env,
    )
    stop = threading.Event()
    try:
        assert server.stdout is not None
        server.stdout.readline()  # ready
        thread = threading.Thread(target=traffic, args=(path, stop))
        thread.start()
        time.sleep(1.0)
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
        data = capture(path)
        stop.set()
        thread.join(10)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    # The last complete frame: from the last cursor-home that is followed by an erase-below.
    frames = [f for f in data.split(b"\x1b[H") if b"\x1b[J" in f]
    render(screen(b"\x1b[H" + frames[-1], COLUMNS, LINES), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
