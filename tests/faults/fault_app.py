"""The application the fault scenarios run: rooms, seq-numbered messages, identity.

``python -m cluster node --app tests.faults.fault_app:socketio``. Connection
state recovery is on (window ``FAULT_RECOVERY_WINDOW``, 60 s by default);
the resume identity is the ``name`` of the CONNECT ``auth``, so a session
can only be resumed by the client that created it. Pings are short
(``FAULT_PING_INTERVAL`` 2 s, ``FAULT_PING_TIMEOUT`` 4 s) so that clients
notice a dead or frozen node within seconds.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, session

from cluster import SocketIO, emit, join_room, rooms

NODE_NAME = os.environ.get("NODE_NAME", "node")

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "fault-test-secret-key")
socketio = SocketIO(
    app,
    connection_state_recovery={
        "max_disconnection_duration": float(os.environ.get("FAULT_RECOVERY_WINDOW", "60"))},
    resume_identity=lambda auth: (auth or {}).get("name"),
    ping_interval=float(os.environ.get("FAULT_PING_INTERVAL", "2")),
    ping_timeout=float(os.environ.get("FAULT_PING_TIMEOUT", "4")),
)


@socketio.on("connect")
def on_connect(auth: dict[str, Any] | None) -> Any:
    name = (auth or {}).get("name")
    if not isinstance(name, str) or not name:
        return False
    if "name" not in session:  # a resumed session keeps the name it was created with
        session["name"] = name
    hold = (auth or {}).get("hold")
    if isinstance(hold, (int, float)) and 0 < hold <= 10:
        socketio.sleep(hold)  # a CONNECT that takes this long (a storm's queue)
    return None


@socketio.on("join")
def on_join(room: str) -> Any:
    join_room(room)
    return NODE_NAME


@socketio.on("say")
def on_say(message: dict[str, Any]) -> Any:
    """Relay ``{room, sender, seq}`` to the room (the sender included)."""
    emit("msg", {"room": message["room"], "sender": message["sender"],
                 "seq": message["seq"]}, to=message["room"])
    return NODE_NAME


@socketio.on("whoami")
def on_whoami() -> Any:
    return {"name": session.get("name"), "node": NODE_NAME, "rooms": sorted(rooms())}
