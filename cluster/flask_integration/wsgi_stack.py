"""The WSGI layers ``init_app`` puts in front of a Flask application.

From the outside in: the health probes (:mod:`cluster.runner.health`), the
refusal of websocket compression when it is off
(:class:`cluster.runner.serve.DeclineCompressionMiddleware`), Socket.IO under
its path, then the Flask routes. Each layer asks the extension for the parts
in use whenever it needs them, since ``reconfigure()`` may replace them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import socketio

from cluster.node.server_setup import NodeParts
from cluster.runner.health import HealthMiddleware
from cluster.runner.serve import DeclineCompressionMiddleware

if TYPE_CHECKING:
    import flask

    from cluster.flask_integration.extension import SocketIO

__all__ = ["wrap_wsgi_app"]


def wrap_wsgi_app(app: flask.Flask, extension: SocketIO) -> None:
    """Serve ``extension`` from ``app``, once however often ``init_app`` runs."""
    if getattr(app, "_cluster_socketio_wrapped", False):
        return
    wsgi_app: Any = socketio.WSGIApp(
        extension.server, app.wsgi_app, socketio_path=extension.server.socketio_path
    )
    wsgi_app = DeclineCompressionMiddleware(
        wsgi_app, lambda: extension.server.config.transport.websocket_compression)
    app.wsgi_app = HealthMiddleware(  # type: ignore[method-assign]
        wsgi_app, extension.node_state, lambda: NodeParts(extension.server, extension.sessions))
    app._cluster_socketio_wrapped = True  # type: ignore[attr-defined]
