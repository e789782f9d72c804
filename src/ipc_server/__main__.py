"""``python -m ipc_server``: the ``ipc-server`` command line (see ``ipc_server.cli``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
