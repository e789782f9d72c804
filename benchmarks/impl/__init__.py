"""One module per system family; each has `serve(...)` and `client(...)` (see worker.py)."""
