"""The package's build backend: setuptools, plus mypy when ``IPC_SERVER_COMPILE=1``.

``pip install .`` builds the pure-Python package and needs neither mypy nor a
C compiler. ``IPC_SERVER_COMPILE=1 pip install .`` asks for the compiled core:
this backend adds mypy (whose mypyc compiles it), orjson and nats-py (whose
types the package is checked against: mypyc checks every module it imports,
the backplane's included) to the build requirements, and ``setup.py`` compiles the
modules it names, falling back to the pure package when that fails. Editable
installs are always pure: the sources in ``src/`` are what runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401 - the hooks this backend does not change
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

COMPILE_REQUIRES = ["mypy>=2.4,<3", "orjson>=3.9", "nats-py>=2.6"]
"""What the compiled core's build needs besides setuptools."""


def compile_requested() -> bool:
    """Whether ``IPC_SERVER_COMPILE`` asks for the compiled core (anything but empty or 0)."""
    return os.environ.get("IPC_SERVER_COMPILE", "").strip() not in ("", "0")


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = build_meta.get_requires_for_build_wheel(config_settings)
    return [*requires, *COMPILE_REQUIRES] if compile_requested() else requires


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    if compile_requested():
        print(
            "ipc_server: an editable install is the pure-Python package "
            "(IPC_SERVER_COMPILE is for pip install .)",
            file=sys.stderr,
        )
        os.environ["IPC_SERVER_COMPILE"] = "0"
    name: str = build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
