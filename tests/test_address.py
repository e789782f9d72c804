"""What path / host / port mean on each OS (docs/guide.md, Addresses), and the stale-socket probe."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import pytest

from ipc_server.address import (
    DEFAULT_NAME,
    SUN_PATH_MAX,
    Address,
    is_abstract,
    probe_unix_socket,
    resolve_address,
)

PIPE = "\\\\.\\pipe\\"
#: A typical macOS $TMPDIR (tempfile.gettempdir() strips the trailing slash; some callers do not).
MACOS_TMPDIR = "/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/"
unix_only = pytest.mark.skipif(sys.platform == "win32", reason="Unix domain sockets")


def net_ipc_pipe(path: str) -> str:
    """net-ipc 2.2.2's Windows mapping (src/server.js, src/client.js), ported."""
    name = path[1:] if path.startswith("/") else path
    return PIPE + name.replace("/", "-")


# --------------------------------------------------------------------------- the address table of docs/guide.md


@pytest.mark.parametrize("platform", ["linux", "darwin"])
@pytest.mark.parametrize("path", [None, ""])
def test_default_unix_path(platform: str, path: str | None) -> None:
    """No path means <tempdir>/isdk-ipc on Linux and macOS."""
    assert resolve_address(path, platform=platform, tempdir="/tmp") == Address(
        "unix", path="/tmp/isdk-ipc"
    )
    assert DEFAULT_NAME == "isdk-ipc"


def test_default_windows_pipe() -> None:
    """No path means the pipe \\\\.\\pipe\\isdk-ipc on Windows."""
    assert resolve_address(platform="win32") == Address("pipe", path=PIPE + "isdk-ipc")


def test_default_uses_tempfile_gettempdir() -> None:
    """Without tempdir=, bare names go to tempfile.gettempdir()."""
    expected = str(Path(tempfile.gettempdir()) / "isdk-ipc")
    assert resolve_address(platform="linux").path == expected


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_bare_name_in_tempdir(platform: str) -> None:
    """A name without a leading / or . is placed in the temp folder."""
    assert resolve_address("myapp", platform=platform, tempdir="/tmp").path == "/tmp/myapp"
    assert resolve_address("a/b", platform=platform, tempdir="/tmp").path == "/tmp/a/b"


def test_bare_name_in_macos_tmpdir_with_trailing_slash() -> None:
    """A tempdir ending in / gives a single separator before the name."""
    address = resolve_address(platform="darwin", tempdir=MACOS_TMPDIR)
    assert address.path == MACOS_TMPDIR + "isdk-ipc"


@pytest.mark.parametrize("platform", ["linux", "darwin"])
@pytest.mark.parametrize("path", ["/run/x.sock", "./x.sock", "../up/x.sock", ".hidden"])
def test_absolute_and_relative_paths_used_as_given(platform: str, path: str) -> None:
    """Paths starting with / or . are used as they are on Linux and macOS."""
    assert resolve_address(path, platform=platform, tempdir="/tmp") == Address("unix", path=path)


@pytest.mark.parametrize(
    ("path", "pipe"),
    [
        ("myapp", PIPE + "myapp"),
        ("/run/x.sock", PIPE + "run-x.sock"),
        ("./x.sock", PIPE + ".-x.sock"),
        ("/a/b/c", PIPE + "a-b-c"),
        ("//double", PIPE + "-double"),
    ],
)
def test_windows_pipe_mapping(path: str, pipe: str) -> None:
    """On Windows a path becomes a pipe name: one leading / dropped, other / become -."""
    assert resolve_address(path, platform="win32") == Address("pipe", path=pipe)
    assert pipe == net_ipc_pipe(path)


@pytest.mark.parametrize("platform", ["win32", "cygwin"])
def test_windows_pipe_name_used_as_given(platform: str) -> None:
    """A full \\\\.\\pipe\\ name is used unchanged on Windows."""
    name = PIPE + "some/name"
    assert resolve_address(name, platform=platform) == Address("pipe", path=name)


def test_windows_ignores_sun_path_limit() -> None:
    """Pipe names are not Unix socket paths: no sun_path limit applies."""
    assert resolve_address("x" * 200, platform="win32").path == PIPE + "x" * 200


@pytest.mark.parametrize("name", ["@myapp", "\0myapp"])
def test_abstract_socket_on_linux(name: str) -> None:
    """On Linux @name (or NUL name) is an abstract socket: path starts with NUL, shown as @name."""
    address = resolve_address(name, platform="linux", tempdir="/tmp")
    assert address == Address("unix", path="\0myapp")
    assert address.abstract
    assert str(address) == "@myapp"
    assert is_abstract(name)


@pytest.mark.parametrize("platform", ["darwin", "win32", "freebsd13"])
def test_abstract_socket_refused_off_linux(platform: str) -> None:
    """An abstract name anywhere but Linux is a ValueError naming Linux."""
    with pytest.raises(ValueError, match="Linux"):
        resolve_address("@myapp", platform=platform, tempdir="/tmp")


def test_file_socket_is_not_abstract() -> None:
    """A path on disk is not abstract and prints as itself."""
    address = resolve_address("/tmp/x.sock", platform="linux")
    assert not address.abstract
    assert str(address) == "/tmp/x.sock"
    assert not is_abstract("/tmp/x.sock")


# --------------------------------------------------------------------------- sun_path


@pytest.mark.parametrize(("platform", "limit"), [("linux", 107), ("darwin", 103)])
def test_sun_path_limit(platform: str, limit: int) -> None:
    """A path of exactly the limit fits; one byte more is a ValueError naming size and limit."""
    assert SUN_PATH_MAX[platform] == limit
    fits = "/" + "a" * (limit - 1)
    assert resolve_address(fits, platform=platform).path == fits
    with pytest.raises(ValueError, match=rf"{limit + 1} bytes.*{limit}-byte limit"):
        resolve_address(fits + "a", platform=platform)


def test_sun_path_limit_counts_bytes_not_characters() -> None:
    """The limit is in encoded bytes: 60 two-byte characters do not fit in 107."""
    with pytest.raises(ValueError, match="121 bytes"):
        resolve_address("/" + "é" * 60, platform="linux")


def test_long_tempdir_refused_for_bare_name() -> None:
    """A bare name in a temp folder too deep for sun_path is a ValueError, not truncated."""
    with pytest.raises(ValueError, match="107"):
        resolve_address("myapp", platform="linux", tempdir="/" + "d" * 110)


def test_typical_macos_tmpdir_fits() -> None:
    """The default name under a typical macOS $TMPDIR fits in macOS's 103 bytes."""
    address = resolve_address(platform="darwin", tempdir=MACOS_TMPDIR.rstrip("/"))
    assert address.path is not None
    assert len(address.path.encode()) <= 103


def test_abstract_name_too_long_refused() -> None:
    """An abstract name longer than sun_path is refused too."""
    with pytest.raises(ValueError, match="limit"):
        resolve_address("@" + "a" * 200, platform="linux")


# --------------------------------------------------------------------------- TCP


def test_tcp_address() -> None:
    """host and port select TCP, on every OS."""
    for platform in ("linux", "darwin", "win32"):
        address = resolve_address(host="example.org", port=8080, platform=platform)
        assert address == Address("tcp", host="example.org", port=8080)
        assert str(address) == "example.org:8080"


def test_tcp_port_only_defaults_to_loopback() -> None:
    """port without host listens/connects on 127.0.0.1; port 0 is allowed (OS picks)."""
    assert resolve_address(port=0) == Address("tcp", host="127.0.0.1", port=0)


def test_tcp_ipv6_str() -> None:
    """An IPv6 host prints in brackets."""
    assert str(resolve_address(host="::1", port=9)) == "[::1]:9"


@pytest.mark.parametrize("port", [-1, 65536, 1.5, "80", True])
def test_tcp_bad_port(port: object) -> None:
    """A port outside 0..65535, or not an int, is a ValueError."""
    with pytest.raises(ValueError, match="port"):
        resolve_address(host="localhost", port=port)  # type: ignore[arg-type]


def test_tcp_host_without_port() -> None:
    """host without port is a ValueError."""
    with pytest.raises(ValueError, match="port"):
        resolve_address(host="localhost")


def test_path_and_host_conflict() -> None:
    """Giving both path and host/port is a ValueError."""
    with pytest.raises(ValueError, match="not both"):
        resolve_address("x", host="localhost", port=1)


def test_wrong_types() -> None:
    """A non-str path or host is a TypeError."""
    with pytest.raises(TypeError):
        resolve_address(b"/tmp/x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        resolve_address(host=1, port=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- probe_unix_socket


@unix_only
def test_probe_live_socket(short_tmp: Path) -> None:
    """A socket someone listens on is live."""
    path = str(short_tmp / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        assert probe_unix_socket(path) is True


@unix_only
def test_probe_stale_socket(short_tmp: Path) -> None:
    """A socket file left behind by a closed server is stale."""
    path = short_tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
    assert path.exists()
    assert probe_unix_socket(str(path)) is False


@unix_only
def test_probe_missing_file(short_tmp: Path) -> None:
    """No file at all is not live."""
    assert probe_unix_socket(str(short_tmp / "missing.sock")) is False


@unix_only
def test_short_tmp_fits_sun_path(short_tmp: Path) -> None:
    """The short_tmp fixture leaves plenty of room for a socket name."""
    assert len(str(short_tmp / "a-reasonably-long-socket-name.sock").encode()) < 100
    assert short_tmp.is_dir()
