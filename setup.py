"""The compiled core (docs/architecture.md, "The compiled core"); the rest is in pyproject.toml.

With ``IPC_SERVER_COMPILE=1`` the modules named in ``COMPILED`` are compiled
with mypyc into C extensions installed beside their ``.py`` sources, which
Python then imports instead. When that cannot be done (mypy missing, mypyc
refusing the code, no working C compiler) the build goes on without them and
says why: the result is the pure-Python package, as without the variable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = (
    "protocol",
    "codecs",
    "events",
    "writes",
    "pending",
    "extensions",
    "endpoint",
    "topics",
)
"""The hot path, compiled: framing, codecs, the emitter, the asyncio protocol, topics.

``endpoint`` is compiled with the three mixins it is made of: ``writes``,
``pending`` (the request table) and ``extensions``, each a trait (a native
class has at most one base that is not). ``topics`` is what a publish matches
with. Every packet of an asyncio end goes through these.

Left interpreted:

- ``future``: ``Pending`` subclasses ``asyncio.Future``, which mypyc cannot compile.
- ``pubsub``: a mixin of the interpreted ``IPCServer`` beside other bases; as a
  native class its layout conflicts with theirs, as a trait it crashes (an
  interpreted class cannot carry a trait's native vtable), as a plain class it
  loses ``Generic``. Its work per publish is one ``topics`` lookup and a loop
  over ``Endpoint.write_shared``, both compiled.
- ``server``, ``client``, ``clientcore``: subclassed by applications and by the
  blocking client; per packet they only hand it on to the emitter (``events``).
- ``streams``, ``services``, ``calls``, ``subscriptions``: used per stream,
  service or subscription, off the plain request path.
- ``listeners`` (types only), ``metrics``, ``cli``, ``sync``: not on the hot path.
"""


def compile_requested() -> bool:
    return os.environ.get("IPC_SERVER_COMPILE", "").strip() not in ("", "0")


def warn(why: str) -> None:
    print(
        f"WARNING: ipc_server: building the pure-Python package, not the compiled core: {why}",
        file=sys.stderr,
        flush=True,
    )


def mypyc_extensions() -> list[Extension]:
    """Generate the compiled core's C code; its extension modules (none if mypyc fails)."""
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypy (mypyc) is not installed; pip installs it for IPC_SERVER_COMPILE=1")
        return []
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = [str(Path("src", "ipc_server", f"{name}.py")) for name in COMPILED]
    try:
        # Type-checked for the interpreter it is built for (pyproject's mypy config says
        # 3.10), so that version checks are compiled as they will run.
        built: list[Extension] = mypycify([f"--python-version={version}", *paths], debug_level="0")
    except (Exception, SystemExit) as exc:  # mypy reports type errors with SystemExit
        warn(f"mypyc failed: {exc!r}")
        return []
    return built


class BuildExt(build_ext):
    """``build_ext`` that drops the whole compiled core when any part of it fails to build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, a compiler error, ...
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = self.distribution.ext_modules = []
            warn(f"the C extensions did not build: {exc}")


# mypyc runs for the commands that build (not for metadata, nor an editable install).
BUILDS = {"build", "build_ext", "bdist_wheel", "install"}

if __name__ == "__main__":
    building = compile_requested() and not BUILDS.isdisjoint(sys.argv[1:])
    setup(ext_modules=mypyc_extensions() if building else [], cmdclass={"build_ext": BuildExt})
