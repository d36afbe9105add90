"""A horizontally scaled Socket.IO cluster for Flask.

Port a Flask-SocketIO application by changing its import::

    from cluster import SocketIO, emit, join_room, leave_room

Names are loaded on first use (PEP 562) so that ``python -m cluster node``
can let eventlet or gevent monkey-patch the process before Flask,
python-socketio or the application are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Client",

    "ConnectionRefusedError",
    "Namespace",
    "SocketIO",
    "SocketIOTestClient",
    "call",
    "close_room",
    "disconnect",
    "emit",
    "join_room",
    "leave_room",
    "rooms",
    "send",
]

_LOCATIONS = {
    "Client": "cluster.client",

    "ConnectionRefusedError": "cluster.exceptions",
    "Namespace": "cluster.flask_integration.namespace",
    "SocketIO": "cluster.flask_integration.extension",
    "SocketIOTestClient": "cluster.flask_integration.testing",
    "call": "cluster.flask_integration.context_functions",
    "close_room": "cluster.flask_integration.context_functions",
    "disconnect": "cluster.flask_integration.context_functions",
    "emit": "cluster.flask_integration.context_functions",
    "join_room": "cluster.flask_integration.context_functions",
    "leave_room": "cluster.flask_integration.context_functions",
    "rooms": "cluster.flask_integration.context_functions",
    "send": "cluster.flask_integration.context_functions",
}

if TYPE_CHECKING:
    from cluster.client import Client
    from cluster.exceptions import ConnectionRefusedError
    from cluster.flask_integration.context_functions import (
        call,
        close_room,
        disconnect,
        emit,
        join_room,
        leave_room,
        rooms,
        send,
    )
    from cluster.flask_integration.extension import SocketIO
    from cluster.flask_integration.namespace import Namespace
    from cluster.flask_integration.testing import SocketIOTestClient

def __getattr__(name: str) -> Any:
    module_name = _LOCATIONS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value

def __dir__() -> list[str]:
    return sorted(__all__)
