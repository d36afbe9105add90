"""The reconnect storm's application, served by this project's node runner.

::

    python -m cluster node --app benchmarks.storm_app:socketio --port 5000 \\
        --message-queue redis://127.0.0.1:6390/0

``benchmarks/fanout_app.py`` leaves connection state recovery off (its
``cluster-recovery`` target turns it on from the command line); the storm is
about recovery, so this app turns it on itself, as an application would:
``max_disconnection_duration`` 120 s, socket.io's default, the same window
as the Node peer (``benchmarks/node/storm_server.mjs``). The connect handler
runs again on a recovered connection (``skip_connect_handler`` False, the
default); there is none here.

Two events, the same in the Node peer:

- ``join`` *room*: join it; the ack names the node's PID, which the driver
  uses to count clients per node and to pick the node to SIGKILL;
- ``publish`` *message*: emit ``msg`` with the message to the room
  ``message["r"]``, every member included (the sender too), across nodes,
  then ack with the node's PID. The load generator counts a message whose
  ack never came and that nobody received as *unconfirmed*, not as missed.

Everything else is the runner's default, including the per-connection rate
limit (100 events/s): a storm client sends one message every few seconds.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from cluster import SocketIO, emit, join_room

# the recovery window in seconds; the Node peer's --recovery-window matches it
RECOVERY_WINDOW = 120.0

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "bench-secret-key")
socketio = SocketIO(app, connection_state_recovery={"max_disconnection_duration": RECOVERY_WINDOW})


@socketio.on("join")
def on_join(room: str) -> dict[str, Any]:
    join_room(room)
    return {"node": os.getpid()}


@socketio.on("publish")
def on_publish(message: dict[str, Any]) -> dict[str, Any]:
    emit("msg", message, to=message["r"])
    return {"node": os.getpid()}
