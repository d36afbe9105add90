"""A node application whose handlers hand work to Celery (workers.tasks).

Run by real node processes in tests/workers/ with ``CELERY_BROKER_URL`` (and
``CELERY_QUEUE``) in their environment; the worker emits progress and results
back through the bus.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from cluster import SocketIO, emit, join_room, rooms
from workers.tasks import broadcast, long_job

NODE_NAME = os.environ.get("NODE_NAME", "node")

app = Flask(__name__)
app.config["SECRET_KEY"] = "worker-app-secret"
socketio = SocketIO(app)


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    emit("welcome", {"sid": request.sid, "node": NODE_NAME})


@socketio.on("join")
def on_join(room: str) -> Any:
    join_room(room)
    return {"node": NODE_NAME, "rooms": sorted(rooms())}


@socketio.on("rooms")
def on_rooms() -> Any:
    return sorted(rooms())


@socketio.on("start_job")
def on_start_job(data: dict[str, Any]) -> Any:
    """Start a long job for this client, reporting to its sid or a room."""
    to = data.get("room") or request.sid
    result = long_job.delay(to=to, steps=int(data.get("steps", 3)),
                            step_seconds=float(data.get("step_seconds", 0.1)))
    return {"job_id": result.id, "node": NODE_NAME, "to": to}


@socketio.on("announce")
def on_announce(data: dict[str, Any]) -> Any:
    """Ask a worker to broadcast to a room, leaving this client out."""
    broadcast.delay("announcement", {"text": data["text"], "from": request.sid},
                    room=data["room"], skip_sid=request.sid if data.get("skip_self") else None)
    return NODE_NAME
