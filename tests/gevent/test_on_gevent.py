"""The node on gevent (``--async-mode gevent``): the eventlet suite's own
tests of what a runtime could break, collected again here with every node
on gevent (see ``conftest.py``), and what is gevent's alone.

Chosen to cover the runtime seam end to end in about two minutes: the
cluster bus through Redis (rooms, emits across nodes), both transports and
the upgrade through HAProxy, drain on SIGTERM, recovery after a SIGKILL
with the official JavaScript client, the websocket transport's bounded
backlog and native-speed reader, and the HTTP server's limits (header,
idle and body deadlines, more than 1,024 connections, compression).
``CLUSTER_ASYNC_MODE=gevent ./dev test`` runs the whole suite on gevent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import socketio

from cluster.devtools.processes import NodeProcess, free_port
from tests.cluster.test_cross_node import (  # noqa: F401  # collected again, on gevent
    test_room_joined_on_one_node_receives_emit_from_the_other,
    test_transports_through_haproxy,
    two_nodes,
)
from tests.harness.peers import Peer
from tests.harness.raw_websocket import RawWebSocket, metric
from tests.js.test_official_client import (  # noqa: F401
    node_binary,
    test_official_client_recovers_after_its_node_is_sigkilled,
)
from tests.node.test_websocket_transport import (  # noqa: F401
    test_a_client_that_stops_reading_is_cut_at_the_backlog_limit,
    test_a_client_uploading_at_full_speed_does_not_hold_up_the_others,
    test_connection_churn_leaves_a_real_nodes_memory_flat,
)
from tests.runner.test_drain import (  # noqa: F401
    test_sigterm_moves_clients_to_another_node_with_their_sessions,
)
from tests.runner.test_serve import (  # noqa: F401
    test_half_sent_requests_are_closed_by_the_header_deadline,
    test_idle_keepalive_closed_but_websockets_and_long_polls_stay,
    test_more_than_1024_connections_are_served,
    test_permessage_deflate_accepted_when_configured,
    test_permessage_deflate_is_declined_by_default,
    test_slow_bodies_are_cut_by_the_body_deadline,
    timeouts_node,
)

ROOT = Path(__file__).resolve().parents[2]


def test_broadcast_frames_keep_their_order_and_share_writes(
        node_factory: Any, sio_client_factory: Any) -> None:
    # tests/node's own version reads order from python-socketio's client,
    # which runs each message's handler in a thread of its own: under load
    # two may swap there. A hand-made client reads the frames as they came.
    (node,) = node_factory(message_queue=None)
    reader = RawWebSocket(node)
    reader.connect_and_join("feed")
    upgraded = Peer(sio_client_factory, node.url, cls=socketio.Client,
                    transports=["polling", "websocket"])
    deadline = time.monotonic() + 10
    while upgraded.client.transport() != "websocket" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upgraded.client.transport() == "websocket"
    upgraded.call("join", "feed")
    before = metric(node, "socketio_websocket_total", "frames")
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    for n in range(200):
        sender.client.emit("to_room", {"room": "feed", "text": f"{n:03d}"})
    texts = []
    while len(texts) < 200:
        frame = reader.read_until('42["room_message"')
        texts.append(json.loads(frame[2:])[1]["text"])
    assert texts == [f"{n:03d}" for n in range(200)]
    received = set()
    while len(received) < 200:
        event, data = upgraded.events.get(timeout=10)
        if event == "room_message":
            received.add(data["text"])
    frames = metric(node, "socketio_websocket_total", "frames") - before
    assert frames >= 400
    assert metric(node, "socketio_websocket_total", "writes") <= metric(
        node, "socketio_websocket_total", "frames")
    reader.close()


def test_the_nodes_here_run_on_gevent(node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    assert f"Node listening on {node.url} (gevent)" in node.log_text()
    assert requests.get(node.url + "/healthz", timeout=5).status_code == 200
    # gevent's compiled loop is loaded (an eventlet node never imports gevent)
    assert "/gevent/" in Path(f"/proc/{node.pid}/maps").read_text()


MISMATCHED_APP = """
from flask import Flask
from cluster import SocketIO

app = Flask(__name__)
socketio = SocketIO(app, async_mode="eventlet")
"""


def test_an_application_naming_the_other_runtime_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mismatched_app.py").write_text(MISMATCHED_APP)
    result = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "mismatched_app:socketio",
         "--port", str(free_port())], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin",
             "CLUSTER_ASYNC_MODE": "gevent"})
    assert result.returncode == 2
    # the first line says it (the app loader then shows where, in the app)
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: --app 'mismatched_app:socketio'")
    assert "async_mode='eventlet', but gevent has monkey-patched this process" in first


FLASK_SOCKETIO_STYLE_APP = """
from gevent import monkey
monkey.patch_all()

import os
from flask import Flask
from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "gevent-run"
socketio = SocketIO(app, async_mode="gevent")


@socketio.on("echo")
def echo(data):
    return {"data": data, "async_mode": socketio.async_mode}


if __name__ == "__main__":
    socketio.run(app, host="127.0.0.1", port=int(os.environ["PORT"]))
"""


class ScriptNode(NodeProcess):
    """A node started as ``python SCRIPT``, as a Flask-SocketIO app runs itself."""

    def __init__(self, script: Path, **kwargs: Any) -> None:
        super().__init__("unused:socketio", **kwargs)
        self.script = script
        self.env["PORT"] = str(self.port)

    def command(self) -> list[str]:
        return [self.python, str(self.script)]


def test_a_flask_socketio_gevent_app_ports_by_its_import(
        tmp_path: Path, sio_client_factory: Any) -> None:
    """What Flask-SocketIO's documentation shows for gevent (patch_all,
    ``async_mode="gevent"``, ``socketio.run``), with ``cluster``'s import."""
    script = tmp_path / "gevent_app.py"
    script.write_text(FLASK_SOCKETIO_STYLE_APP)
    node = ScriptNode(script, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                      log_path=tmp_path / "gevent_app.log")
    node.start()
    try:
        for transports in (["websocket"], ["polling"]):
            client = sio_client_factory(reconnection=False)
            client.connect(node.url, transports=transports, wait_timeout=10)
            assert client.call("echo", "hi", timeout=5) == {"data": "hi", "async_mode": "gevent"}
            client.disconnect()
        assert node.stop(grace=10) == 0  # SIGTERM drains it, as the node runner's
        assert "Traceback" not in node.log_text()
    finally:
        node.stop()


def test_a_closed_socket_releases_its_gevent_ping_timer() -> None:
    # as on eventlet (tests/node/test_websocket_transport.py): a pending
    # timer would hold a closed connection for a whole ping interval
    import engineio

    from cluster import runtime
    from cluster.node.websocket_transport import ClusterSocket

    server = engineio.Server(async_mode="threading")
    server.runtime = runtime.load("gevent")
    eio_socket = ClusterSocket(server, "sid1")
    eio_socket.schedule_ping()
    timer = eio_socket.ping_timer
    assert timer is not None and timer.active
    eio_socket.close(wait=False, abort=True)
    assert not timer.active and eio_socket.ping_timer is None
    assert timer.callback is None  # the callback, and so the socket, let go
