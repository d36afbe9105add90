"""cluster.runner.health: the probe routes, in process (threading mode).

The real extension wraps a real Flask app; Flask's test client calls the
probes the way a balancer or a kubelet would.
"""

from __future__ import annotations

from flask import Flask

from cluster import SocketIO
from cluster.bus.features import bus_features
from cluster.runner.health import NodeState

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k"

    @app.route("/")
    def index() -> str:
        return "the app"

    return app


def test_healthz_and_readyz_on_a_single_node() -> None:
    app = _app()
    SocketIO(app)
    client = app.test_client()
    alive = client.get("/healthz")
    assert (alive.status_code, alive.data) == (200, b"ok\n")
    assert alive.headers["Cache-Control"] == "no-store"
    ready = client.get("/readyz")
    assert (ready.status_code, ready.data) == (200, b"ready\n")
    # the application's own routes are untouched
    assert client.get("/").data == b"the app"


def test_a_draining_node_is_not_ready_and_refuses_new_socketio_clients() -> None:
    app = _app()
    socketio = SocketIO(app)
    client = app.test_client()
    assert client.get(HANDSHAKE).status_code == 200  # an Engine.IO OPEN
    socketio.node_state.draining = True
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.data == b"not ready: draining\n"
    refused = client.get(HANDSHAKE)
    assert (refused.status_code, refused.data) == (503, b"node is draining\n")
    # a connection that exists (its sid in the query) is still served, and
    # so are the app's routes and the liveness probe
    known = client.get("/socket.io/?EIO=4&transport=polling&sid=unknown")
    assert known.data != b"node is draining\n"
    assert client.get("/").data == b"the app"
    assert client.get("/healthz").status_code == 200


def test_the_draining_check_follows_the_configured_socketio_path() -> None:
    app = _app()
    socketio = SocketIO(app, path="live")
    socketio.node_state.draining = True
    client = app.test_client()
    assert client.get("/live/?EIO=4&transport=polling").status_code == 503
    # not Socket.IO here: Flask answers (no such route)
    assert client.get(HANDSHAKE).status_code == 404


def test_a_node_whose_bus_is_not_subscribed_is_not_ready() -> None:
    app = _app()
    # a real bus manager that has not joined its (unreachable) Redis
    socketio = SocketIO(app, message_queue="redis://127.0.0.1:1/0")
    assert bus_features(socketio.server.manager).ready is False
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.data == b"not ready: bus unreachable\n"
    socketio.node_state.draining = True
    assert client.get("/readyz").data == b"not ready: draining, bus unreachable\n"
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_node_state_asks_the_manager_in_use_at_each_probe() -> None:
    app = _app()
    socketio = SocketIO(app, message_queue="redis://127.0.0.1:1/0")
    state = NodeState(lambda: bus_features(socketio.server.manager))
    assert not state.is_ready()
    assert state.reasons() == ["bus unreachable"]
    socketio.use_message_queue(None)  # back to a single node, always ready
    assert state.is_ready()
    assert state.reasons() == []
    assert socketio.node_state.is_ready()


def test_metrics_are_served_in_the_prometheus_format() -> None:
    app = _app()
    SocketIO(app)
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.data.decode()
    assert "socketio_connections 0.0" in text
    assert "socketio_node_ready 1.0" in text
