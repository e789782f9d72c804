"""Windows named pipes that only the current user can open (docs/guide.md, Addresses).

asyncio's ``loop.start_serving_pipe`` creates every pipe instance with a NULL
security descriptor and accepts remote clients. Per the ``CreateNamedPipe``
documentation, a NULL descriptor gives the default DACL: full control for
LocalSystem, Administrators and the creator owner, *read* access for Everyone
and Anonymous Logon; without ``PIPE_REJECT_REMOTE_CLIENTS`` clients on other
machines may connect over SMB. This module serves a pipe the same way asyncio
does (same open and pipe modes, buffer sizes and accept loop through the
Proactor), except that each instance is created with

* ``PIPE_REJECT_REMOTE_CLIENTS``, and
* a protected DACL with one ACE: ``GENERIC_ALL`` for the current user's SID
  (``D:P(A;;GA;;;<SID>)``): no other user, not even SYSTEM or Administrators.

``FILE_FLAG_FIRST_PIPE_INSTANCE`` on the first instance (as in asyncio) makes
listening fail when any process, of any user, already has a pipe of that name:
nobody can squat the name and share it with the server.

Only the ctypes bindings at the bottom need Windows; the rest is plain Python so
the accept loop can be tested anywhere with a fake proactor. Import this module
only on win32 (``transport`` does) or from tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sys
import weakref
from collections.abc import Callable
from typing import Any, Protocol

# Win32 values (winbase.h / winnt.h / winerror.h).
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_MESSAGE = 0x00000004
PIPE_READMODE_MESSAGE = 0x00000002
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
PIPE_SERVER_END = 0x00000001
NMPWAIT_WAIT_FOREVER = 0xFFFFFFFF
BUFSIZE = 8192  # asyncio.windows_utils.BUFSIZE
ERROR_ACCESS_DENIED = 5
ERROR_PIPE_BUSY = 231

PIPE_MODE = PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS
"""asyncio's pipe mode plus PIPE_REJECT_REMOTE_CLIENTS."""

RETRY_DELAY = 0.1
"""Seconds before trying again after an instance could not be created or accepted."""


def open_mode(first: bool) -> int:
    """``dwOpenMode`` for an instance: the first one must be new (nobody else owns the name)."""
    mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
    return mode | FILE_FLAG_FIRST_PIPE_INSTANCE if first else mode


def pipe_sddl(sid: str) -> str:
    """A protected DACL granting ``GENERIC_ALL`` to ``sid`` and to nobody else."""
    if not re.fullmatch(r"S-1(-[0-9]+)+", sid):
        raise ValueError(f"not a string SID: {sid!r}")
    return f"D:P(A;;GA;;;{sid})"


class PipeHandleLike(Protocol):
    """What the Proactor needs of a pipe: ``asyncio.windows_utils.PipeHandle`` on Windows."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


CreatePipe = Callable[[str, bool], PipeHandleLike]
"""``create(address, first)``: a new overlapped pipe instance."""


class PipeServer:
    """One served pipe name; like asyncio's ``PipeServer`` with a pluggable instance factory.

    There is always one spare unconnected instance besides the one being
    accepted on, so a client never finds the name missing between accepts.
    """

    def __init__(self, address: str, create: CreatePipe) -> None:
        self._address: str | None = address
        self._create = create
        self._free: weakref.WeakSet[PipeHandleLike] = weakref.WeakSet()
        self._accept_future: asyncio.Future[Any] | None = None
        self._pipe: PipeHandleLike | None = None
        self._pipe = self._new_instance(first=True)

    def _new_instance(self, first: bool) -> PipeHandleLike:
        assert self._address is not None
        pipe = self._create(self._address, first)
        self._free.add(pipe)
        return pipe

    def closed(self) -> bool:
        return self._address is None

    def take_unconnected(self) -> PipeHandleLike | None:
        """The instance to accept on next, after making a spare (None once closed).

        Raises:
            OSError: No instance could be created (retry later).
        """
        if self._address is None:
            return None
        if self._pipe is None:
            self._pipe = self._new_instance(first=False)
        pipe, self._pipe = self._pipe, None
        # At the 255-instance limit or out of handles: no spare this time.
        with contextlib.suppress(OSError):
            self._pipe = self._new_instance(first=False)
        return pipe

    def accepting(self, future: asyncio.Future[Any]) -> None:
        self._accept_future = future

    def discard(self, pipe: PipeHandleLike) -> None:
        """``pipe`` is connected (or failed): ``close`` no longer closes it."""
        self._free.discard(pipe)

    def close(self) -> None:
        """Stop accepting and close every unconnected instance; connected ones stay open."""
        if self._accept_future is not None:
            self._accept_future.cancel()
            self._accept_future = None
        if self._address is not None:
            for pipe in list(self._free):
                pipe.close()
            self._free.clear()
            self._pipe = None
            self._address = None


def serve_pipe(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    address: str,
    create: CreatePipe,
) -> list[PipeServer]:
    """Serve ``address`` on the Proactor ``loop``, as ``loop.start_serving_pipe`` does.

    Raises:
        RuntimeError: ``loop`` is not a Proactor event loop.
        OSError: The first instance could not be created (``PermissionError``,
            winerror 5, when the name is taken).
    """
    proactor: Any = getattr(loop, "_proactor", None)
    make_transport: Any = getattr(loop, "_make_duplex_pipe_transport", None)
    if not hasattr(proactor, "accept_pipe") or make_transport is None:
        raise RuntimeError(
            "named pipes need the Proactor event loop (the default on Windows); "
            "the running loop does not support them"
        )
    server = PipeServer(address, create)

    def report(message: str, exc: BaseException, pipe: PipeHandleLike | None) -> None:
        loop.call_exception_handler({"message": message, "exception": exc, "pipe": pipe})

    def accept_next() -> None:
        try:
            pipe = server.take_unconnected()
        except OSError as exc:
            if getattr(exc, "winerror", None) != ERROR_PIPE_BUSY:  # busy: at the instance limit
                report("Creating a pipe instance failed", exc, None)
            loop.call_later(RETRY_DELAY, accept_next)
            return
        if pipe is None:
            return
        try:
            future = proactor.accept_pipe(pipe)
        except OSError as exc:
            server.discard(pipe)
            pipe.close()
            if isinstance(exc, BrokenPipeError):  # the client came and went already
                loop.call_soon(accept_next)
            else:
                report("Pipe accept failed", exc, pipe)
                loop.call_later(RETRY_DELAY, accept_next)
            return
        server.accepting(future)
        future.add_done_callback(functools.partial(accepted, pipe))

    def accepted(pipe: PipeHandleLike, future: asyncio.Future[Any]) -> None:
        server.discard(pipe)
        if future.cancelled() or server.closed():
            pipe.close()
            return
        exc = future.exception()
        if exc is not None:
            pipe.close()
            if not isinstance(exc, BrokenPipeError):
                report("Pipe accept failed", exc, pipe)
        else:
            try:
                make_transport(pipe, factory(), extra={"addr": address})
            except Exception as error:
                pipe.close()
                report("Creating the protocol for a pipe client failed", error, pipe)
        accept_next()

    loop.call_soon(accept_next)
    return [server]


if sys.platform == "win32":  # pragma: no cover - Windows only
    import ctypes
    from asyncio import windows_utils
    from ctypes import wintypes

    class _SecurityAttributes(ctypes.Structure):
        _fields_ = [
            ("nLength", wintypes.DWORD),
            ("lpSecurityDescriptor", wintypes.LPVOID),
            ("bInheritHandle", wintypes.BOOL),
        ]

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
    _HANDLE = wintypes.HANDLE
    _DWORD = wintypes.DWORD
    _kernel32.GetCurrentProcess.argtypes = []
    _kernel32.GetCurrentProcess.restype = _HANDLE
    _kernel32.CloseHandle.argtypes = [_HANDLE]
    _kernel32.LocalFree.argtypes = [wintypes.HLOCAL]
    _kernel32.LocalFree.restype = wintypes.HLOCAL
    _kernel32.CreateNamedPipeW.argtypes = [
        wintypes.LPCWSTR,
        *[_DWORD] * 6,
        ctypes.POINTER(_SecurityAttributes),
    ]
    _kernel32.CreateNamedPipeW.restype = ctypes.c_ssize_t  # a plain int; INVALID_HANDLE_VALUE is -1
    _kernel32.GetNamedPipeInfo.argtypes = [_HANDLE, *[wintypes.LPDWORD] * 4]
    _kernel32.GetNamedPipeClientProcessId.argtypes = [_HANDLE, wintypes.PULONG]
    _kernel32.GetNamedPipeServerProcessId.argtypes = [_HANDLE, wintypes.PULONG]
    _advapi32.OpenProcessToken.argtypes = [_HANDLE, _DWORD, wintypes.PHANDLE]
    _advapi32.GetTokenInformation.argtypes = [
        _HANDLE,
        ctypes.c_int,
        wintypes.LPVOID,
        _DWORD,
        wintypes.PDWORD,
    ]
    _advapi32.ConvertSidToStringSidW.argtypes = [wintypes.LPVOID, ctypes.POINTER(wintypes.LPWSTR)]
    _advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = [
        wintypes.LPCWSTR,
        _DWORD,
        ctypes.POINTER(wintypes.LPVOID),
        wintypes.PULONG,
    ]
    _TOKEN_QUERY = 0x0008
    _TOKEN_USER = 1  # TOKEN_INFORMATION_CLASS.TokenUser
    _SDDL_REVISION_1 = 1

    def _check(ok: Any) -> None:
        if not ok:
            raise ctypes.WinError(ctypes.get_last_error())

    def current_user_sid() -> str:
        """The string SID of this process's user (``S-1-5-21-...``)."""
        token = _HANDLE()
        _check(
            _advapi32.OpenProcessToken(
                _kernel32.GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)
            )
        )
        try:
            # TOKEN_USER is a SID_AND_ATTRIBUTES whose first field points to the SID.
            buf = ctypes.create_string_buffer(256)
            size = _DWORD()
            _check(
                _advapi32.GetTokenInformation(token, _TOKEN_USER, buf, len(buf), ctypes.byref(size))
            )
            psid = ctypes.cast(buf, ctypes.POINTER(wintypes.LPVOID)).contents
            text = wintypes.LPWSTR()
            _check(_advapi32.ConvertSidToStringSidW(psid, ctypes.byref(text)))
            try:
                return str(text.value)
            finally:
                _kernel32.LocalFree(ctypes.cast(text, wintypes.HLOCAL))
        finally:
            _kernel32.CloseHandle(token)

    @functools.cache
    def _security_attributes() -> _SecurityAttributes:
        # Built once per process; the descriptor is never freed (it is tiny).
        descriptor = wintypes.LPVOID()
        _check(
            _advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                pipe_sddl(current_user_sid()), _SDDL_REVISION_1, ctypes.byref(descriptor), None
            )
        )
        return _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), descriptor.value, False)

    def create_secure_pipe(address: str, first: bool) -> PipeHandleLike:
        """A new overlapped instance of ``address`` for the current user only, local clients only."""
        handle = _kernel32.CreateNamedPipeW(
            address,
            open_mode(first),
            PIPE_MODE,
            PIPE_UNLIMITED_INSTANCES,
            BUFSIZE,
            BUFSIZE,
            NMPWAIT_WAIT_FOREVER,
            ctypes.byref(_security_attributes()),
        )
        if handle == -1:
            raise ctypes.WinError(ctypes.get_last_error())
        return windows_utils.PipeHandle(handle)

    def peer_pid(handle: int) -> int | None:
        """The process id at the other end of a connected pipe handle, or None."""
        flags = _DWORD()
        if not _kernel32.GetNamedPipeInfo(handle, ctypes.byref(flags), None, None, None):
            return None
        pid = wintypes.ULONG()
        if flags.value & PIPE_SERVER_END:
            ok = _kernel32.GetNamedPipeClientProcessId(handle, ctypes.byref(pid))
        else:
            ok = _kernel32.GetNamedPipeServerProcessId(handle, ctypes.byref(pid))
        return int(pid.value) if ok else None
