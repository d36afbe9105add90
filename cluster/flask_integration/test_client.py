"""Flask-SocketIO's module name for the test client, so that
``from flask_socketio.test_client import SocketIOTestClient`` ports by the
same one-word change (the class lives in :mod:`cluster.flask_integration.testing`)."""

from __future__ import annotations

from cluster.flask_integration.testing import SocketIOTestClient

__all__ = ["SocketIOTestClient"]
