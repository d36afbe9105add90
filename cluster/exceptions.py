"""Errors raised by the socket node.

The tree::

    ClusterError
    ├── ConfigurationError      the extension or the runner was set up wrongly
    │                           (cluster.config validates every option once)
    ├── AppLoadError            ``--app MODULE:ATTR`` could not be resolved
    ├── NotInHandlerError       a context function was called outside a handler
    ├── LeaseLost               a singleton task's node no longer holds its lease
    └── LimitExceeded           a per-connection limit of cluster.node.limits
        └── RoomLimitExceeded   join_room past max_rooms_per_connection

``ConnectionRefusedError`` is python-socketio's own class, re-exported so that
``from cluster import ConnectionRefusedError`` behaves exactly like
``from flask_socketio import ConnectionRefusedError``.
"""

from __future__ import annotations

from socketio.exceptions import ConnectionRefusedError

__all__ = [
    "AppLoadError",
    "ClusterError",
    "ConfigurationError",
    "ConnectionRefusedError",
    "LeaseLost",
    "LimitExceeded",
    "NotInHandlerError",
    "RoomLimitExceeded",
]


class ClusterError(Exception):
    """Base class of every error this package raises on its own."""


class ConfigurationError(ClusterError, ValueError):
    """The extension, the runner or the bus was configured wrongly."""


class AppLoadError(ClusterError):
    """The application named by ``--app MODULE:ATTR`` could not be loaded."""


class NotInHandlerError(ClusterError, RuntimeError):
    """A function that needs a Socket.IO handler context was called elsewhere.

    ``emit()``, ``send()``, ``join_room()`` and friends default their target to
    the connection being handled (``request.sid``); outside a handler there is
    none.
    """

    def __init__(self, function: str) -> None:
        super().__init__(
            f"{function}() was called outside a Socket.IO event handler, so "
            "there is no current connection. Call it from a handler, or pass "
            "the target explicitly (to=/sid=/namespace=), or use the "
            "SocketIO object's method of the same name."
        )


class LimitExceeded(ClusterError):
    """A connection reached one of the node's per-connection limits."""


class RoomLimitExceeded(LimitExceeded):
    """``join_room`` would put a connection in more rooms than allowed.

    Raised in the handler that called ``join_room``; the connection stays
    in the rooms it had. ``sid``, ``namespace`` and ``limit`` say which.
    """

    def __init__(self, sid: str, namespace: str, limit: int) -> None:
        self.sid = sid
        self.namespace = namespace
        self.limit = limit
        super().__init__(
            f"Connection {sid[:8]} is already in {limit} rooms of namespace "
            f"{namespace!r}, the max_rooms_per_connection limit. Leave rooms first, or "
            "raise the limit with SocketIO(max_rooms_per_connection=...) or "
            "--max-rooms-per-connection if the application needs more."
        )


class LeaseLost(ClusterError):
    """This node lost the lease of a singleton task (``start_singleton_task``).

    Raised inside the task by ``socketio.sleep``/``emit``/``send``/``call``
    (and ``current_lease().check()``) once another node may be running it,
    so the old run stops; the task's runner catches it. ``name`` is the
    task's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"This node no longer holds the lease of singleton task {name!r} (Redis "
            "unreachable, or the lease expired while the process stalled), so another "
            "node may run it now. Let the exception end the task; it is competed for "
            "again by every node.")
