"""Connection sessions: how the node binds each connection to its forked
session in :mod:`session_store` (load, save, resume by pid), its connection
record and rooms in Redis, and the leases that keep them alive.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
