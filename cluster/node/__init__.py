"""The node server: python-socketio's server with the cluster's hooks, its
engine and websocket transport (frames written once per broadcast, bounded
backlogs), packet decoding, and the per-connection limits.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
