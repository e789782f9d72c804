"""Platform specifics that can be checked on any OS (docs/guide.md, Addresses).

* macOS: ``sun_path`` holds 103 bytes and ``$TMPDIR`` is long.
* Windows: the address mapping, and the named-pipe code of ``ipc_server._winpipe``
  and ``transport`` driven through fakes (a fake Proactor, a fake ``WinDLL``), so
  its logic runs on Linux too. The tests at the bottom need real Windows and are
  collected only there (the CI's windows-latest jobs).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import os
import struct
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar, cast

import pytest

from ipc_server import _winpipe, transport
from ipc_server.address import Address, resolve_address
from ipc_server.transport import PeerCredentials

PIPE = "\\\\.\\pipe\\"
#: Shaped like a real macOS $TMPDIR (/var/folders/<2>/<28>/T/).
MACOS_TMPDIR = "/var/folders/5x/abcdefghijk0123456789xyz0000gn/T/"
MACOS_LIMIT = 103


def nbytes(path: str | None) -> int:
    assert path is not None
    return len(os.fsencode(path))


# ----------------------------------------------------------------------------- macOS sun_path


@pytest.mark.parametrize("tempdir", [MACOS_TMPDIR, MACOS_TMPDIR.rstrip("/")])
def test_macos_default_path_fits(tempdir: str) -> None:
    """The default socket under a typical $TMPDIR fits (with or without a trailing slash)."""
    address = resolve_address(platform="darwin", tempdir=tempdir)
    assert address.kind == "unix"
    assert address.path == os.path.join(tempdir, "isdk-ipc")
    assert nbytes(address.path) <= MACOS_LIMIT


@pytest.mark.parametrize("name", ["myapp", "myapp.sock", "com.example.my-app.sock"])
def test_macos_typical_app_names_fit(name: str) -> None:
    """Typical app names under $TMPDIR fit in 103 bytes."""
    address = resolve_address(name, platform="darwin", tempdir=MACOS_TMPDIR)
    assert address.path == os.path.join(MACOS_TMPDIR, name)
    assert nbytes(address.path) <= MACOS_LIMIT


def test_macos_longest_name_under_tmpdir() -> None:
    """Names up to the room left under $TMPDIR fit; one byte more says size and limit."""
    room = MACOS_LIMIT - nbytes(os.path.join(MACOS_TMPDIR, ""))
    assert room >= 50  # plenty for app names even under a long $TMPDIR
    fits = resolve_address("n" * room, platform="darwin", tempdir=MACOS_TMPDIR)
    assert nbytes(fits.path) == MACOS_LIMIT
    with pytest.raises(ValueError, match=rf"is {MACOS_LIMIT + 1} bytes.*103-byte limit.*darwin"):
        resolve_address("n" * (room + 1), platform="darwin", tempdir=MACOS_TMPDIR)


def test_macos_too_long_path_error_says_how_long_and_the_limit() -> None:
    """A deep path is a ValueError giving its length and the limit, never truncated."""
    path = "/Users/someone/Library/Application Support/com.example.app/sockets/" + "x" * 60
    size = nbytes(path)
    with pytest.raises(ValueError, match=rf"is {size} bytes, longer than the 103-byte limit") as e:
        resolve_address(path, platform="darwin")
    assert path in str(e.value)


def test_same_path_fits_linux_but_not_macos() -> None:
    """105 bytes fit Linux's 107 but not macOS's 103."""
    path = "/" + "p" * 104
    assert resolve_address(path, platform="linux").path == path
    with pytest.raises(ValueError, match="105 bytes"):
        resolve_address(path, platform="darwin")


def test_macos_limit_counts_bytes() -> None:
    """Non-ASCII names count in UTF-8 bytes: 52 x 'é' is 104 bytes."""
    with pytest.raises(ValueError, match="is 105 bytes"):
        resolve_address("/" + "é" * 52, platform="darwin")


# ----------------------------------------------------------------------------- Windows mapping


@pytest.mark.parametrize(
    ("given", "pipe"),
    [
        (None, PIPE + "isdk-ipc"),
        ("", PIPE + "isdk-ipc"),
        ("myapp", PIPE + "myapp"),
        ("/run/x.sock", PIPE + "run-x.sock"),
        ("./x.sock", PIPE + ".-x.sock"),
        ("a/b/c", PIPE + "a-b-c"),
        (PIPE + "given", PIPE + "given"),
        (PIPE + "with/slash", PIPE + "with/slash"),
    ],
)
def test_windows_pipe_names(given: str | None, pipe: str) -> None:
    """The address table for Windows (net-ipc's mapping); a pipe name is used as given."""
    address = resolve_address(given, platform="win32", tempdir="C:\\Temp")
    assert address == Address("pipe", path=pipe)
    assert str(address) == pipe
    assert not address.abstract


@pytest.mark.parametrize("platform", ["win32", "darwin"])
@pytest.mark.parametrize("name", ["@myapp", "\0myapp"])
def test_abstract_names_refused_off_linux(platform: str, name: str) -> None:
    """Abstract names exist only on Linux."""
    with pytest.raises(ValueError, match="only on Linux"):
        resolve_address(name, platform=platform, tempdir="/tmp")


def test_windows_long_pipe_name_not_checked_against_sun_path() -> None:
    """sun_path does not apply to pipes."""
    assert resolve_address("x" * 150, platform="win32").path == PIPE + "x" * 150


# ----------------------------------------------------------------------------- TCP options


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_tcp_same_on_every_platform(platform: str) -> None:
    """host/port select TCP everywhere; no host means 127.0.0.1; port 0 lets the OS pick."""
    assert resolve_address(host="::1", port=0, platform=platform) == Address(
        "tcp", host="::1", port=0
    )
    assert resolve_address(port=80, platform=platform) == Address("tcp", host="127.0.0.1", port=80)
    assert str(resolve_address(host="::1", port=9, platform=platform)) == "[::1]:9"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"host": "h"}, ValueError, "port= is required"),
        ({"path": "x", "port": 1}, ValueError, "either path= or host="),
        ({"path": "x", "host": "h", "port": 1}, ValueError, "either path= or host="),
        ({"host": "h", "port": 70000}, ValueError, "0 to 65535"),
        ({"host": "h", "port": -1}, ValueError, "0 to 65535"),
        ({"host": "h", "port": True}, ValueError, "0 to 65535"),
        ({"host": "h", "port": "80"}, ValueError, "0 to 65535"),
        ({"host": 1, "port": 80}, TypeError, "host must be a str"),
        ({"path": b"x"}, TypeError, "path must be a str"),
    ],
)
def test_tcp_option_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Bad combinations and values are refused with a message naming the option."""
    with pytest.raises(error, match=match):
        resolve_address(**kwargs)


# ----------------------------------------------------------------------------- _winpipe values


def test_pipe_flags() -> None:
    """asyncio's open and pipe modes, plus PIPE_REJECT_REMOTE_CLIENTS (0x8)."""
    assert _winpipe.PIPE_REJECT_REMOTE_CLIENTS == 0x8
    assert _winpipe.PIPE_MODE == 0x4 | 0x2 | 0x0 | 0x8
    assert _winpipe.open_mode(first=True) == 0x00000003 | 0x40000000 | 0x00080000
    assert _winpipe.open_mode(first=False) == 0x00000003 | 0x40000000
    assert _winpipe.PIPE_UNLIMITED_INSTANCES == 255


def test_sddl_grants_only_the_given_sid() -> None:
    """A protected DACL (no inherited ACEs) with a single allow-all ACE for the SID."""
    sid = "S-1-5-21-1004336348-1177238915-682003330-1001"
    assert _winpipe.pipe_sddl(sid) == f"D:P(A;;GA;;;{sid})"


@pytest.mark.parametrize("bad", ["", "WD", "S-1-5)(A;;GA;;;WD", "s-1-5-18", "S-1-"])
def test_sddl_refuses_anything_but_a_sid(bad: str) -> None:
    """Nothing but a string SID can reach the SDDL (no ACE injection)."""
    with pytest.raises(ValueError, match="SID"):
        _winpipe.pipe_sddl(bad)


# ----------------------------------------------------------------------------- accept loop


class FakePipe:
    """A pipe instance: a number, closed or not."""

    count = 0

    def __init__(self, address: str, first: bool) -> None:
        FakePipe.count += 1
        self.number = FakePipe.count
        self.address = address
        self.first = first
        self.closed = False

    def fileno(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed pipe")
        return self.number

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakePipe {self.number}{' closed' if self.closed else ''}>"


class FakeProactor:
    """accept_pipe() returns a future the test completes (a client connecting)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[FakePipe, asyncio.Future[Any]]] = []
        self.raise_next: list[OSError] = []

    def accept_pipe(self, pipe: FakePipe) -> asyncio.Future[Any]:
        if self.raise_next:
            raise self.raise_next.pop(0)
        assert not pipe.closed
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pending.append((pipe, future))
        return future


class FakeLoop:
    """The parts of a ProactorEventLoop that serve_pipe uses, over the real running loop."""

    def __init__(self, real: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._proactor = FakeProactor(real)
        self.transports: list[tuple[FakePipe, asyncio.BaseProtocol, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def call_soon(self, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        return self._real.call_soon(callback, *args)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return self._real.call_later(delay, callback, *args)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def _make_duplex_pipe_transport(
        self, pipe: FakePipe, protocol: asyncio.BaseProtocol, extra: Any = None
    ) -> None:
        self.transports.append((pipe, protocol, extra))


class Pipes:
    """The instance factory handed to serve_pipe; can be told to fail."""

    def __init__(self) -> None:
        self.made: list[FakePipe] = []
        self.fail: list[OSError] = []

    def __call__(self, address: str, first: bool) -> FakePipe:
        if self.fail:
            raise self.fail.pop(0)
        pipe = FakePipe(address, first)
        self.made.append(pipe)
        return pipe


NAME = PIPE + "served"


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
async def fake_loop() -> FakeLoop:
    return FakeLoop(asyncio.get_running_loop())


def serve(loop: FakeLoop, pipes: Pipes, factory: Any = asyncio.Protocol) -> _winpipe.PipeServer:
    (server,) = _winpipe.serve_pipe(cast(asyncio.AbstractEventLoop, loop), factory, NAME, pipes)
    return server


def connect_client(loop: FakeLoop) -> FakePipe:
    pipe, future = loop._proactor.pending.pop(0)
    future.set_result(pipe)
    return pipe


async def test_serve_pipe_first_instance_then_spare(fake_loop: FakeLoop) -> None:
    """The first instance is FIRST_PIPE_INSTANCE and accepted on; a spare keeps the name alive."""
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    assert [p.first for p in pipes.made] == [True]
    await settle()
    assert [p.first for p in pipes.made] == [True, False]
    assert [p for p, _ in fake_loop._proactor.pending] == [pipes.made[0]]
    assert not server.closed()
    server.close()


async def test_serve_pipe_client_gets_a_transport(fake_loop: FakeLoop) -> None:
    """A connected instance becomes a transport with a fresh protocol; accepting goes on."""
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    await settle()
    first = connect_client(fake_loop)
    await settle()
    ((pipe, protocol, extra),) = fake_loop.transports
    assert pipe is first
    assert not pipe.closed
    assert isinstance(protocol, asyncio.Protocol)
    assert extra == {"addr": NAME}
    # The spare is accepted on next and a new spare made.
    assert [p for p, _ in fake_loop._proactor.pending] == [pipes.made[1]]
    assert len(pipes.made) == 3
    second = connect_client(fake_loop)
    await settle()
    assert [t[0] for t in fake_loop.transports] == [first, second]
    server.close()


async def test_serve_pipe_close(fake_loop: FakeLoop) -> None:
    """close() cancels the accept and closes unconnected instances only; nothing new is made."""
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    await settle()
    connected = connect_client(fake_loop)
    await settle()
    (_waiting, future) = fake_loop._proactor.pending[0]
    server.close()
    assert server.closed()
    assert future.cancelled()
    await settle()
    assert not connected.closed
    assert all(p.closed for p in pipes.made if p is not connected)
    made = len(pipes.made)
    await asyncio.sleep(0.02)
    assert len(pipes.made) == made
    assert fake_loop.errors == []
    server.close()  # idempotent


async def test_serve_pipe_client_racing_close_is_dropped(fake_loop: FakeLoop) -> None:
    """A client whose accept completed just before close() gets no transport."""
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    await settle()
    pipe = connect_client(fake_loop)
    server.close()
    await settle()
    assert pipe.closed
    assert fake_loop.transports == []


@pytest.mark.parametrize("error", [BrokenPipeError(32, "gone"), OSError(22, "bad")])
async def test_serve_pipe_accept_failure_goes_on(fake_loop: FakeLoop, error: OSError) -> None:
    """A failed accept closes that instance and accepts on the next; only non-broken pipes report."""
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    await settle()
    pipe, future = fake_loop._proactor.pending.pop(0)
    future.set_exception(error)
    await settle()
    assert pipe.closed
    assert len(fake_loop._proactor.pending) == 1
    if isinstance(error, BrokenPipeError):
        assert fake_loop.errors == []
    else:
        assert [e["exception"] for e in fake_loop.errors] == [error]
    server.close()


async def test_serve_pipe_accept_raising_at_once(
    fake_loop: FakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accept_pipe raising (client already gone) closes the instance and tries again."""
    monkeypatch.setattr(_winpipe, "RETRY_DELAY", 0.001)
    fake_loop._proactor.raise_next = [BrokenPipeError(32, "gone"), OSError(5, "odd")]
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    await settle()
    await asyncio.sleep(0.05)
    assert pipes.made[0].closed
    assert pipes.made[1].closed
    assert len(fake_loop._proactor.pending) == 1
    assert [e["message"] for e in fake_loop.errors] == ["Pipe accept failed"]
    server.close()


async def test_serve_pipe_protocol_factory_error(fake_loop: FakeLoop) -> None:
    """A protocol factory that raises is reported; the client is dropped; serving goes on."""
    boom = RuntimeError("factory")

    def factory() -> asyncio.Protocol:
        raise boom

    pipes = Pipes()
    server = serve(fake_loop, pipes, factory)
    await settle()
    pipe = connect_client(fake_loop)
    await settle()
    assert pipe.closed
    assert [e["exception"] for e in fake_loop.errors] == [boom]
    assert len(fake_loop._proactor.pending) == 1
    server.close()


async def test_serve_pipe_instance_limit(
    fake_loop: FakeLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No spare at the instance limit: accept on what exists, retry creating later (no spin)."""
    monkeypatch.setattr(_winpipe, "RETRY_DELAY", 0.01)
    busy = OSError(22, "All pipe instances are busy")
    busy.winerror = 231  # type: ignore[attr-defined,unused-ignore]
    other = OSError(12, "Insufficient system resources")
    pipes = Pipes()
    server = serve(fake_loop, pipes)
    pipes.fail = [busy]  # the spare
    await settle()
    assert len(pipes.made) == 1
    assert [p for p, _ in fake_loop._proactor.pending] == [pipes.made[0]]
    pipes.fail = [busy, other]  # the next instance, twice
    connect_client(fake_loop)
    await settle()
    assert fake_loop._proactor.pending == []
    await asyncio.sleep(0.1)
    # ERROR_PIPE_BUSY is expected at the limit and not reported; anything else is.
    assert [e["exception"] for e in fake_loop.errors] == [other]
    assert len(fake_loop._proactor.pending) == 1
    server.close()


def test_serve_pipe_first_instance_error_raises() -> None:
    """The first instance failing (the name is taken) is raised to listen()."""
    pipes = Pipes()
    taken = PermissionError(13, "Access is denied")
    pipes.fail = [taken]
    loop = FakeLoop(cast(asyncio.AbstractEventLoop, None))
    with pytest.raises(PermissionError):
        serve(loop, pipes)


def test_serve_pipe_needs_a_proactor() -> None:
    """Any other loop is a clear RuntimeError."""
    loop = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(RuntimeError, match="Proactor"):
            _winpipe.serve_pipe(loop, asyncio.Protocol, NAME, Pipes())
    finally:
        loop.close()


# ----------------------------------------------------------------------------- ctypes, faked


class FakeFunction:
    """A WinDLL export: records argtypes/restype and calls."""

    def __init__(self, impl: Callable[..., Any]) -> None:
        self.impl = impl
        self.argtypes: list[Any] | None = None
        self.restype: Any = "unset"
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.impl(*args)


class FakeWindows:
    """kernel32/advapi32 exports used by _winpipe, acting like Windows would."""

    SID = "S-1-5-21-1004336348-1177238915-682003330-1001"
    TOKEN = 0x1234

    def __init__(self) -> None:
        self.last_error = 5
        self.sid_blob = ctypes.create_string_buffer(b"\x01\x05sid", 28)
        self.descriptor = ctypes.create_string_buffer(20)
        self.pipe_handle = 77
        self.pipe_flags = _winpipe.PIPE_SERVER_END
        self.info_ok = True
        self.win_errors: list[int | None] = []
        k: dict[str, Callable[..., Any]] = {
            "GetCurrentProcess": lambda: -1,
            "CloseHandle": lambda handle: 1,
            "LocalFree": lambda pointer: None,
            "CreateNamedPipeW": lambda *args: self.pipe_handle,
            "GetNamedPipeInfo": self._pipe_info,
            "GetNamedPipeClientProcessId": lambda h, p: self._set(p, 1111),
            "GetNamedPipeServerProcessId": lambda h, p: self._set(p, 2222),
        }
        a: dict[str, Callable[..., Any]] = {
            "OpenProcessToken": lambda process, access, p: self._set(p, self.TOKEN),
            "GetTokenInformation": self._token_information,
            "ConvertSidToStringSidW": self._sid_to_string,
            "ConvertStringSecurityDescriptorToSecurityDescriptorW": self._sddl_to_sd,
        }
        self.dlls = {
            "kernel32": {n: FakeFunction(f) for n, f in k.items()},
            "advapi32": {n: FakeFunction(f) for n, f in a.items()},
        }

    def fn(self, name: str) -> FakeFunction:
        for exports in self.dlls.values():
            if name in exports:
                return exports[name]
        raise KeyError(name)

    @staticmethod
    def _set(byref: Any, value: Any) -> int:
        byref._obj.value = value
        return 1

    def _pipe_info(self, handle: int, flags: Any, *rest: Any) -> int:
        assert rest == (None, None, None)
        return self._set(flags, self.pipe_flags) if self.info_ok else 0

    def _token_information(self, token: Any, klass: int, buf: Any, size: int, out: Any) -> int:
        assert token.value == self.TOKEN
        assert klass == 1  # TokenUser
        assert size == len(buf)
        # TOKEN_USER starts with a pointer to the SID.
        ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0] = ctypes.addressof(self.sid_blob)
        return self._set(out, 36)

    def _sid_to_string(self, psid: Any, out: Any) -> int:
        assert psid.value == ctypes.addressof(self.sid_blob)
        return self._set(out, self.SID)

    def _sddl_to_sd(self, sddl: str, revision: int, out: Any, size: Any) -> int:
        assert revision == 1
        assert size is None
        return self._set(out, ctypes.addressof(self.descriptor))

    def win_dll(self, name: str, use_last_error: bool = False) -> types.SimpleNamespace:
        assert use_last_error
        return types.SimpleNamespace(**self.dlls[name])

    def win_error(self, code: int | None = None) -> OSError:
        self.win_errors.append(code)
        return PermissionError(13, "Access is denied")


class FakePipeHandle:
    def __init__(self, handle: int) -> None:
        self.handle = handle


@pytest.fixture
def fake_windows(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeWindows, Any]:
    """_winpipe loaded afresh as on win32, over fake DLLs (never the real ones, even on Windows)."""
    win = FakeWindows()
    fake_utils = types.ModuleType("asyncio.windows_utils")
    fake_utils.PipeHandle = FakePipeHandle  # type: ignore[attr-defined]
    monkeypatch.setattr(ctypes, "WinDLL", win.win_dll, raising=False)
    monkeypatch.setattr(ctypes, "WinError", win.win_error, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: win.last_error, raising=False)
    monkeypatch.setitem(sys.modules, "asyncio.windows_utils", fake_utils)
    monkeypatch.setattr(asyncio, "windows_utils", fake_utils, raising=False)
    spec = importlib.util.spec_from_file_location("_winpipe_on_fake_windows", _winpipe.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as m:
        m.setattr(sys, "platform", "win32")
        spec.loader.exec_module(module)
    return win, module


def test_fake_windows_create_secure_pipe(fake_windows: tuple[FakeWindows, Any]) -> None:
    """CreateNamedPipeW gets the flags and a descriptor built from the user's SID."""
    win, module = fake_windows
    pipe = module.create_secure_pipe(NAME, True)
    assert isinstance(pipe, FakePipeHandle)
    assert pipe.handle == 77
    ((name, mode, pipe_mode, instances, out_size, in_size, timeout, attrs_ref),) = win.fn(
        "CreateNamedPipeW"
    ).calls
    assert (name, mode, pipe_mode, instances) == (NAME, 0x40080003, 0xE, 255)
    assert (out_size, in_size, timeout) == (8192, 8192, 0xFFFFFFFF)
    attrs = attrs_ref._obj
    assert attrs.nLength == ctypes.sizeof(attrs)
    assert attrs.lpSecurityDescriptor == ctypes.addressof(win.descriptor)
    assert not attrs.bInheritHandle
    (sd_call,) = win.fn("ConvertStringSecurityDescriptorToSecurityDescriptorW").calls
    assert sd_call[0] == f"D:P(A;;GA;;;{win.SID})"
    # The token was closed and the SID string freed.
    assert [c[0].value for c in win.fn("CloseHandle").calls] == [win.TOKEN]
    assert len(win.fn("LocalFree").calls) == 1

    module.create_secure_pipe(NAME, False)
    assert win.fn("CreateNamedPipeW").calls[1][1] == 0x40000003
    # The descriptor is built once per process.
    assert len(win.fn("ConvertStringSecurityDescriptorToSecurityDescriptorW").calls) == 1


def test_fake_windows_create_failure(fake_windows: tuple[FakeWindows, Any]) -> None:
    """INVALID_HANDLE_VALUE raises the last error (ERROR_ACCESS_DENIED for a taken name)."""
    win, module = fake_windows
    win.pipe_handle = -1
    with pytest.raises(PermissionError):
        module.create_secure_pipe(NAME, True)
    assert win.win_errors == [module.ERROR_ACCESS_DENIED]


def test_fake_windows_token_failure(fake_windows: tuple[FakeWindows, Any]) -> None:
    """A failing OpenProcessToken raises instead of creating an unprotected pipe."""
    win, module = fake_windows
    win.dlls["advapi32"]["OpenProcessToken"].impl = lambda *args: 0
    with pytest.raises(PermissionError, match="Access is denied"):
        module.create_secure_pipe(NAME, True)
    assert win.fn("CreateNamedPipeW").calls == []


@pytest.mark.parametrize(("flags", "pid"), [(1, 1111), (0, 2222)])
def test_fake_windows_peer_pid(fake_windows: tuple[FakeWindows, Any], flags: int, pid: int) -> None:
    """The server end asks for the client's pid, the client end for the server's."""
    win, module = fake_windows
    win.pipe_flags = flags
    assert module.peer_pid(77) == pid
    win.info_ok = False
    assert module.peer_pid(77) is None


def test_fake_windows_every_call_declares_its_types(fake_windows: tuple[FakeWindows, Any]) -> None:
    """Every export called has argtypes matching the call (64-bit handles are not truncated)."""
    win, module = fake_windows
    module.create_secure_pipe(NAME, True)
    module.peer_pid(77)
    called = 0
    for exports in win.dlls.values():
        for name, fn in exports.items():
            for call in fn.calls:
                called += 1
                assert fn.argtypes is not None, name
                assert len(fn.argtypes) == len(call), name
    assert called >= 10
    assert win.fn("CreateNamedPipeW").restype is ctypes.c_ssize_t
    assert win.fn("GetCurrentProcess").restype is ctypes.c_void_p


# ----------------------------------------------------------------------------- transport


async def test_connect_times_out_on_a_pipe_that_never_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """connect() bounds a pipe connect that hangs, and cancels it."""
    loop = asyncio.get_running_loop()
    cancelled = asyncio.Event()

    async def hang(factory: Any, address: str) -> Any:
        assert address == PIPE + "never"
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(loop, "create_pipe_connection", hang, raising=False)
    start = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await transport.connect(asyncio.Protocol, Address("pipe", path=PIPE + "never"), timeout=0.2)
    assert 0.15 < loop.time() - start < 2.0
    assert cancelled.is_set()


async def test_connect_timeout_stops_a_busy_retry_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect_pipe-like loop (ERROR_PIPE_BUSY, sleep 1 ms doubling to 100 ms) stops at timeout."""
    loop = asyncio.get_running_loop()
    attempts = 0

    async def busy(factory: Any, address: str) -> Any:
        nonlocal attempts
        delay = 0.001
        while True:
            attempts += 1  # ConnectPipe() -> ERROR_PIPE_BUSY
            delay = min(delay * 2, 0.1)
            await asyncio.sleep(delay)

    monkeypatch.setattr(loop, "create_pipe_connection", busy, raising=False)
    with pytest.raises(asyncio.TimeoutError):
        await transport.connect(asyncio.Protocol, Address("pipe", path=PIPE + "busy"), timeout=0.3)
    tried = attempts
    assert tried > 3
    await asyncio.sleep(0.25)
    assert attempts == tried


async def test_connect_pipe_needs_a_proactor() -> None:
    """Without create_pipe_connection (not the Proactor loop) connect says why."""
    if hasattr(asyncio.get_running_loop(), "create_pipe_connection"):
        pytest.skip("this loop serves pipes")
    with pytest.raises(RuntimeError, match="Proactor"):
        await transport.connect(asyncio.Protocol, Address("pipe", path=PIPE + "x"), timeout=1)


@pytest.mark.skipif(sys.platform == "win32", reason="off Windows only")
async def test_listen_on_a_pipe_off_windows() -> None:
    """A pipe address off Windows is a clear RuntimeError."""
    with pytest.raises(RuntimeError, match="only on Windows"):
        await transport.listen(asyncio.Protocol, Address("pipe", path=PIPE + "x"))


@pytest.mark.skipif(sys.platform == "win32", reason="off Windows only")
def test_pipe_client_pid_off_windows() -> None:
    """No pipe pid off Windows."""
    assert transport._pipe_client_pid(FakePipe(NAME, True)) is None


class FakeDarwinSocket:
    """getsockopt answering LOCAL_PEERCRED (struct xucred) and LOCAL_PEERPID."""

    def __init__(self, cred: bytes, pid: bytes | None) -> None:
        self.cred = cred
        self.pid = pid
        self.calls: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.calls.append((level, option, size))
        if option == 2 and self.pid is None:
            raise OSError(42, "Protocol not available")
        return self.cred if option == 1 else cast(bytes, self.pid)


def xucred(uid: int, groups: list[int]) -> bytes:
    padded = groups + [0] * (16 - len(groups))
    return struct.pack("IIh16I", 0, uid, len(groups), *padded)


def test_darwin_peer_credentials() -> None:
    """SOL_LOCAL(0)/LOCAL_PEERCRED(1) gives uid and first group; LOCAL_PEERPID(2) the pid."""
    sock = FakeDarwinSocket(xucred(501, [20, 12, 61]), struct.pack("i", 4321))
    assert transport._darwin_peer(cast(Any, sock)) == PeerCredentials(4321, 501, 20)
    assert sock.calls == [(0, 1, 76), (0, 2, 4)]


def test_darwin_peer_without_pid_or_groups() -> None:
    """No LOCAL_PEERPID (old macOS) leaves pid None; no groups leaves gid None."""
    sock = FakeDarwinSocket(xucred(0, []), None)
    assert transport._darwin_peer(cast(Any, sock)) == PeerCredentials(None, 0, None)


def test_darwin_peer_short_answer_is_an_oserror() -> None:
    """A truncated xucred is an OSError (peer_credentials turns it into None)."""
    with pytest.raises(OSError, match="76"):
        transport._darwin_peer(cast(Any, FakeDarwinSocket(b"\0" * 8, None)))


# ----------------------------------------------------------------------------- real Windows

if sys.platform == "win32":  # pragma: no cover - Windows only
    import _winapi
    import msvcrt
    import subprocess
    import uuid
    from asyncio import windows_utils
    from ctypes import wintypes

    from helpers import eventually
    from ipc_server.errors import AddressInUseError

    def unique_pipe() -> str:
        return f"{PIPE}ipc-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"

    class Echo(asyncio.Protocol):
        instances: ClassVar[list[Echo]] = []

        def __init__(self) -> None:
            self.lost = asyncio.Event()
            Echo.instances.append(self)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set()

    class Collect(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.lost = asyncio.Event()

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set()

    def test_windows_flags_match_winapi() -> None:
        """Our constants are asyncio's (_winapi's) values."""
        assert _winpipe.PIPE_ACCESS_DUPLEX == _winapi.PIPE_ACCESS_DUPLEX
        assert _winpipe.FILE_FLAG_OVERLAPPED == _winapi.FILE_FLAG_OVERLAPPED
        assert _winpipe.FILE_FLAG_FIRST_PIPE_INSTANCE == _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE
        assert _winpipe.PIPE_TYPE_MESSAGE == _winapi.PIPE_TYPE_MESSAGE
        assert _winpipe.PIPE_READMODE_MESSAGE == _winapi.PIPE_READMODE_MESSAGE
        assert _winpipe.PIPE_WAIT == _winapi.PIPE_WAIT
        assert _winpipe.PIPE_UNLIMITED_INSTANCES == _winapi.PIPE_UNLIMITED_INSTANCES
        assert _winpipe.NMPWAIT_WAIT_FOREVER == _winapi.NMPWAIT_WAIT_FOREVER
        assert _winpipe.ERROR_PIPE_BUSY == _winapi.ERROR_PIPE_BUSY
        assert _winpipe.BUFSIZE == windows_utils.BUFSIZE

    def test_windows_current_user_sid_matches_whoami() -> None:
        """The SID read from the process token is the one whoami reports."""
        out = subprocess.run(
            ["whoami", "/user", "/fo", "csv", "/nh"], capture_output=True, text=True, check=True
        ).stdout
        assert _winpipe.current_user_sid() == out.strip().split(",")[-1].strip('"')

    async def test_windows_pipe_round_trip_and_peer_pid() -> None:
        """A client connects through connect(), data echoes, both ends see this pid."""
        address = Address("pipe", path=unique_pipe())
        listener = await transport.listen(Echo, address)
        try:
            client, protocol = await transport.connect(Collect, address, timeout=5)
            collect = cast(Collect, protocol)
            cast(asyncio.Transport, client).write(b"hello")
            await eventually(lambda: bytes(collect.data) == b"hello")
            server_side = Echo.instances[-1]
            mine = PeerCredentials(os.getpid(), None, None)
            assert transport._pipe_client_pid(client.get_extra_info("pipe")) == mine
            assert transport._pipe_client_pid(server_side.transport.get_extra_info("pipe")) == mine
            client.close()
            await asyncio.wait_for(server_side.lost.wait(), 5)
            await asyncio.wait_for(collect.lost.wait(), 5)
        finally:
            listener.close()

    async def test_windows_second_listener_is_address_in_use() -> None:
        """FILE_FLAG_FIRST_PIPE_INSTANCE: a second server on the name is AddressInUseError."""
        address = Address("pipe", path=unique_pipe())
        listener = await transport.listen(Echo, address)
        try:
            with pytest.raises(AddressInUseError):
                await transport.listen(Echo, address)
        finally:
            listener.close()

    async def test_windows_pipe_dacl_is_current_user_only() -> None:
        """The pipe's DACL, read back, has one ACE: allow, for this user's SID."""
        address = Address("pipe", path=unique_pipe())
        before = len(Echo.instances)
        listener = await transport.listen(Echo, address)
        try:
            assert address.path is not None
            client = await asyncio.to_thread(open, address.path, "r+b", 0)
            with client:
                sddl = _read_dacl(msvcrt.get_osfhandle(client.fileno()))
            # GA may read back mapped to FA (FILE_ALL_ACCESS).
            assert sddl.startswith("D:"), sddl
            assert sddl.count("(") == 1, sddl
            assert "(A;;" in sddl, sddl
            assert sddl.endswith(f";;;{_winpipe.current_user_sid()})"), sddl
            await eventually(
                lambda: len(Echo.instances) > before and Echo.instances[-1].lost.is_set()
            )
        finally:
            listener.close()

    def _read_dacl(handle: int) -> str:
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        get_info = advapi32.GetSecurityInfo
        get_info.argtypes = [
            wintypes.HANDLE,
            ctypes.c_int,
            wintypes.DWORD,
            *[ctypes.POINTER(wintypes.LPVOID)] * 5,
        ]
        get_info.restype = wintypes.DWORD
        to_text = advapi32.ConvertSecurityDescriptorToStringSecurityDescriptorW
        to_text.argtypes = [
            wintypes.LPVOID,
            wintypes.DWORD,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.LPWSTR),
            wintypes.PULONG,
        ]
        kernel32.LocalFree.argtypes = [wintypes.HLOCAL]
        se_kernel_object, dacl_information = 6, 4
        descriptor = wintypes.LPVOID()
        error = get_info(
            handle,
            se_kernel_object,
            dacl_information,
            None,
            None,
            None,
            None,
            ctypes.byref(descriptor),
        )
        assert error == 0, ctypes.WinError(error)
        text = wintypes.LPWSTR()
        try:
            ok = to_text(descriptor, 1, dacl_information, ctypes.byref(text), None)
            assert ok, ctypes.WinError(ctypes.get_last_error())
            return str(text.value)
        finally:
            kernel32.LocalFree(descriptor)
            kernel32.LocalFree(ctypes.cast(text, wintypes.HLOCAL))

    async def test_windows_connect_timeout_on_busy_pipe() -> None:
        """asyncio retries ERROR_PIPE_BUSY forever; connect()'s timeout ends it."""
        name = unique_pipe()
        handle = _winapi.CreateNamedPipe(
            name,
            _winapi.PIPE_ACCESS_DUPLEX,
            _winapi.PIPE_TYPE_MESSAGE | _winapi.PIPE_READMODE_MESSAGE | _winapi.PIPE_WAIT,
            1,  # one instance, taken by the first client
            8192,
            8192,
            0,
            _winapi.NULL,
        )
        try:
            first_client = await asyncio.to_thread(open, name, "r+b", 0)
            with first_client:
                loop = asyncio.get_running_loop()
                start = loop.time()
                with pytest.raises(asyncio.TimeoutError):
                    await transport.connect(Collect, Address("pipe", path=name), timeout=0.5)
                assert loop.time() - start < 3
        finally:
            _winapi.CloseHandle(handle)

    async def test_windows_listen_on_a_foreign_pipe_is_address_in_use() -> None:
        """A pipe someone else created first cannot be joined (no squatting)."""
        name = unique_pipe()
        handle = _winapi.CreateNamedPipe(
            name,
            _winapi.PIPE_ACCESS_DUPLEX,
            _winapi.PIPE_WAIT,  # PIPE_TYPE_BYTE is 0
            _winapi.PIPE_UNLIMITED_INSTANCES,
            8192,
            8192,
            0,
            _winapi.NULL,
        )
        try:
            with pytest.raises(AddressInUseError):
                await transport.listen(Echo, Address("pipe", path=name))
        finally:
            _winapi.CloseHandle(handle)

    async def test_windows_connect_to_missing_pipe_fails_at_once() -> None:
        """A pipe that does not exist is FileNotFoundError, not a retry until the timeout."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(FileNotFoundError):
            await transport.connect(Collect, Address("pipe", path=unique_pipe()), timeout=5)
        assert loop.time() - start < 2
