"""What a ``path`` / ``host`` / ``port`` means on this OS (docs/guide.md, Addresses).

Pure functions over plain values, so the mapping for every OS can be tested
on any OS: pass ``platform=`` ("linux", "darwin", "win32") and ``tempdir=``.
"""

from __future__ import annotations

import errno
import os
import posixpath
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_NAME",
    "SUN_PATH_MAX",
    "Address",
    "is_abstract",
    "probe_unix_socket",
    "resolve_address",
]

DEFAULT_NAME = "isdk-ipc"
"""The socket / pipe name used when no address is given (the seed's default)."""

SUN_PATH_MAX: dict[str, int] = {"linux": 107, "darwin": 103}
"""Longest usable Unix socket path in bytes (``sun_path`` minus the NUL)."""

_OTHER_BSD_MAX = 103
PIPE_PREFIX = "\\\\.\\pipe\\"

Kind = Literal["unix", "pipe", "tcp"]


@dataclass(frozen=True)
class Address:
    """A resolved address.

    Attributes:
        kind: ``"unix"`` (a Unix domain socket), ``"pipe"`` (a Windows named
            pipe) or ``"tcp"`` (TCP, optionally with TLS).
        path: The socket path or pipe name, for ``unix`` and ``pipe``. On
            Linux an abstract socket's path starts with ``"\\0"``.
        host: The host, for ``tcp``.
        port: The port, for ``tcp`` (0 lets the OS choose when listening).
    """

    kind: Kind
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def abstract(self) -> bool:
        """True for a Linux abstract-namespace socket (no file on disk)."""
        return self.kind == "unix" and self.path is not None and self.path.startswith("\0")

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = self.host or ""
            return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        assert self.path is not None
        return "@" + self.path[1:] if self.abstract else self.path


def _platform_key(platform: str) -> str:
    if platform.startswith("linux"):
        return "linux"
    if platform == "darwin":
        return "darwin"
    if platform in ("win32", "cygwin"):
        return "win32"
    return platform


def is_abstract(path: str) -> bool:
    """Whether ``path`` names a Linux abstract socket (starts with NUL or ``@``)."""
    return path.startswith(("\0", "@"))


def _pipe_name(path: str) -> str:
    if path.startswith(PIPE_PREFIX):
        return path
    # net-ipc's mapping: drop one leading "/", turn every other "/" into "-".
    name = path[1:] if path.startswith("/") else path
    return PIPE_PREFIX + name.replace("/", "-")


def check_sun_path(path: str, platform: str = sys.platform) -> None:
    """Raise ``ValueError`` if ``path`` does not fit in ``sun_path`` on ``platform``."""
    limit = SUN_PATH_MAX.get(_platform_key(platform), _OTHER_BSD_MAX)
    size = len(os.fsencode(path))
    if size > limit:
        raise ValueError(
            f"Unix socket path is {size} bytes, longer than the {limit}-byte limit of "
            f"sun_path on {platform}: {path!r}; use a shorter path (for example under /tmp)"
        )


def resolve_address(
    path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    platform: str = sys.platform,
    tempdir: str | None = None,
) -> Address:
    """Map the user's ``path`` / ``host`` / ``port`` to an ``Address``.

    Args:
        path: A name (``"myapp"``: placed in the temp folder, or made a pipe
            name on Windows), a path (``"/run/x.sock"``, ``"./x.sock"``), a
            Windows pipe name (``"\\\\.\\pipe\\name"``), or on Linux an abstract
            name (``"@name"`` or ``"\\0name"``).
        host: TCP host. Giving ``host`` or ``port`` selects TCP.
        port: TCP port.
        platform: The OS to map for (``sys.platform`` by default).
        tempdir: The temp folder for bare names (``tempfile.gettempdir()`` by default).

    Raises:
        ValueError: For a path too long for ``sun_path``, both ``path`` and
            ``host``/``port``, a bad port, or an abstract name off Linux.
        TypeError: For arguments of the wrong type.
    """
    if path is not None and not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if host is not None or port is not None:
        if path is not None:
            raise ValueError("give either path= or host=/port=, not both")
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if port is None:
            raise ValueError("port= is required with host=")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, not {port!r}")
        return Address("tcp", host=host or "127.0.0.1", port=port)

    key = _platform_key(platform)
    if path is None or path == "":
        path = DEFAULT_NAME
    if key == "win32":
        if is_abstract(path):
            raise ValueError("abstract socket names (starting with '@' or NUL) exist only on Linux")
        return Address("pipe", path=_pipe_name(path))
    if is_abstract(path):
        if key != "linux":
            raise ValueError("abstract socket names (starting with '@' or NUL) exist only on Linux")
        name = "\0" + path[1:]
        check_sun_path(name, platform)
        return Address("unix", path=name)
    if not path.startswith(("/", ".")):
        # posixpath, not os.path: the mapping is for the target OS, not the host.
        path = posixpath.join(tempdir if tempdir is not None else tempfile.gettempdir(), path)
    check_sun_path(path, platform)
    return Address("unix", path=path)


def probe_unix_socket(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``.

    A connect to a Unix socket answers at once (it does not wait for
    ``accept``), so this never blocks for long.

    Returns:
        True if a server accepted; False if the file is a stale socket
        (connection refused) or does not exist.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EAGAIN (backlog full) or a timeout means a live but busy server.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    else:
        return True
    finally:
        probe.close()
