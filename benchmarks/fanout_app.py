"""The fan-out benchmark's application, served by this project's node runner.

::

    python -m cluster node --app benchmarks.fanout_app:socketio --port 5000 \\
        --message-queue redis://127.0.0.1:6390/0

Two events, the same in the Flask-SocketIO peer
(``benchmarks/peers/flask_socketio_app.py``) and the Node peer
(``benchmarks/node/server.mjs``), so the three targets run one application:

- ``join`` *room*: join it; the ack names the node's PID, which the driver
  uses to find the node a client is on (to SIGKILL it, or to count clients
  per node);
- ``publish`` *message*: emit ``msg`` with the message to the room
  ``message["r"]``, every member included (the sender too), across nodes.

The handlers are kept identical to the peer's on purpose: only the import differs.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from cluster import SocketIO, emit, join_room

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "bench-secret-key")
# each publisher socket sends hundreds of events/s, far past the node's default
# per-connection rate limit (100/s, meant for browsers); the peers have none
socketio = SocketIO(app, max_events_per_second=None)


@socketio.on("join")
def on_join(room: str) -> dict[str, Any]:
    join_room(room)
    return {"node": os.getpid()}


@socketio.on("publish")
def on_publish(message: dict[str, Any]) -> None:
    emit("msg", message, to=message["r"])
