"""Errors raised by the socket node.

The tree::

    ClusterError
    ├── ConfigurationError      the extension or the runner was set up wrongly
    ├── AppLoadError            ``--app MODULE:ATTR`` could not be resolved
    └── NotInHandlerError       a context function was called outside a handler

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
    "NotInHandlerError",
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
