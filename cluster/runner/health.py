"""``/healthz``, ``/readyz`` and ``/metrics`` in front of the application.

The node answers these itself, ahead of Flask and Socket.IO, so that a
load balancer or Kubernetes probe never runs application code and a
draining node can report not-ready while its clients are still served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cluster.runner.metrics import CONTENT_TYPE, render_metrics

if TYPE_CHECKING:
    from cluster.bus.features import BusFeatures
    from cluster.node.server_setup import NodeParts

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class NodeState:
    """What the probes report: alive, draining, bus reachable.

    :param features: returns the features of the client manager in use
        (:func:`cluster.bus.bus_features`); called at each probe, since the
        node runner may join the node to a bus after the app was built.
    """

    def __init__(self, features: Callable[[], BusFeatures]) -> None:
        self.features = features
        self.draining = False

    def bus_ready(self) -> bool:
        features = self.features()
        # a node that has not yet heard its peers' heartbeats could not ask
        # them anything (who holds a session, cluster queries): not ready yet
        return bool(features.ready) and bool(features.knows_peers)

    def is_ready(self) -> bool:
        return not self.draining and self.bus_ready()

    def reasons(self) -> list[str]:
        reasons = []
        if self.draining:
            reasons.append("draining")
        if not self.bus_ready():
            reasons.append("bus unreachable")
        return reasons


class HealthMiddleware:
    """Serve the probe endpoints, pass everything else to ``wsgi_app``.

    :param node: returns the node's parts in use (server and sessions) for
        ``/metrics`` and the Socket.IO path.
    """

    def __init__(self, wsgi_app: WSGIApp, state: NodeState,
                 node: Callable[[], NodeParts]) -> None:
        self.wsgi_app = wsgi_app
        self.state = state
        self.node = node

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _respond(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if self.state.is_ready():
                return _respond(start_response, "200 OK", b"ready\n")
            body = ("not ready: " + ", ".join(self.state.reasons()) + "\n").encode()
            return _respond(start_response, "503 Service Unavailable", body)
        if path == "/metrics":
            node = self.node()
            return _respond(start_response, "200 OK",
                            render_metrics(node.server, node.sessions, self.state), CONTENT_TYPE)
        if self.state.draining and _is_new_socketio_connection(
                environ, self.node().server.socketio_path):
            # an Engine.IO handshake (no sid yet): this node is going away, so
            # the client retries and the load balancer picks another node
            return _respond(start_response, "503 Service Unavailable", b"node is draining\n")
        return self.wsgi_app(environ, start_response)


def _is_new_socketio_connection(environ: dict[str, Any], socketio_path: str) -> bool:
    path = environ.get("PATH_INFO", "").strip("/")
    if not path.startswith(socketio_path):
        return False
    return "sid=" not in environ.get("QUERY_STRING", "")


def _respond(start_response: Callable[..., Any], status: str, body: bytes,
             content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]
