"""A process that runs as ``nobody``, for the tests of who may connect (a second uid).

``python tests/as_nobody.py client <path> '<json options>'``: connects a
blocking ``IPCClient`` to ``path`` as nobody, asks ``"who"``, and prints one
JSON line: ``{"ok": answer}`` or ``{"error": class name, "reason": ...}``.

``python tests/as_nobody.py impostor <path>``: binds ``path`` (as root, so
any folder will do), then listens as nobody (the kernel records the
listener's credentials at ``listen()``), prints ``READY``, and for each
connection prints ``{"received": hex}`` once the peer has gone: what a
client sent to a server it should not have trusted. It never answers.

Everything is imported before the switch: as nobody, the interpreter's own
folders may be out of reach.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import socket
import sys

if importlib.util.find_spec("ipc_server") is None:  # not installed: this checkout's src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

# Imported before the switch to nobody.
import ipc_server.sync


def become_nobody() -> None:
    """Drop root for good: no supplementary groups, nobody's gid and uid."""
    entry = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def client(path: str, options: dict[str, object]) -> None:
    become_nobody()
    try:
        with ipc_server.sync.IPCClient(path=path, reconnect=False, **options) as c:  # type: ignore[arg-type]
            answer = c.request("who")
        print(json.dumps({"ok": answer}), flush=True)
    except Exception as exc:
        reason = getattr(exc, "reason", None)
        print(json.dumps({"error": type(exc).__name__, "reason": str(reason or exc)}), flush=True)


def impostor(path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    become_nobody()
    sock.listen(16)
    print("READY", flush=True)
    while True:
        peer, _ = sock.accept()
        received = b""
        peer.settimeout(30)
        try:
            while chunk := peer.recv(65536):
                received += chunk
        except OSError:
            pass
        peer.close()
        print(json.dumps({"received": received.hex()}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    else:
        impostor(sys.argv[2])
