"""The client contract: one suite that the asyncio and the blocking client must both pass.

Every test runs once per front (``asyncio``: ``ipc_server.IPCClient``;
``blocking``: ``ipc_server.sync.IPCClient``) through one synchronous interface
(``adapters.py``), against the blocking ``ipc_server.sync.IPCServer``
(``peer.py``), with the same assertions.
"""
