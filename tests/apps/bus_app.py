"""The application the cluster-bus node tests run (``tests/bus``).

Every handler answers through its ack so a test can drive one node and
observe another. Cluster facilities are reached through the server's client
manager, which the node runner swaps for the bus manager after this module
is imported: hence ``_bus()`` instead of import-time registration.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, request

from cluster import SocketIO, close_room, disconnect, join_room, leave_room
from cluster.bus import ClusterRequestTimeout, with_timeout

app = Flask(__name__)
app.config["SECRET_KEY"] = "bus-test"
socketio = SocketIO(app)

NODE = os.environ.get("NODE_NAME") or f"pid{os.getpid()}"
_registered: set[int] = set()
_lock = threading.Lock()


def _bus() -> Any:
    """The bus manager, with this app's cluster handlers registered once."""
    manager = socketio.server.manager
    with _lock:
        if id(manager) not in _registered and hasattr(manager, "cluster"):
            _registered.add(id(manager))
            manager.cluster.on("whoami", lambda prefix: f"{prefix}{NODE}")

            @manager.presence.on
            def presence(event: str, room: Any, namespace: str) -> None:
                socketio.server.emit("presence", {"event": event, "room": room,
                                                  "node": NODE}, to="watchers")
    return manager


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    _bus()


@socketio.on("whoami")
def whoami() -> dict[str, Any]:
    return {"sid": request.sid, "node": NODE, "pid": os.getpid()}


@socketio.on("join")
def on_join(data: dict[str, Any]) -> list[Any]:
    join_room(data["room"], sid=data.get("sid"))
    return sorted(socketio.server.rooms(request.sid), key=str)


@socketio.on("join_many")
def on_join_many(data: dict[str, Any]) -> int:
    """Join every room of ``data["rooms"]`` (one event for many joins)."""
    for room in data["rooms"]:
        join_room(room)
    return len(data["rooms"])


@socketio.on("leave")
def on_leave(data: dict[str, Any]) -> bool:
    leave_room(data["room"], sid=data.get("sid"))
    return True


@socketio.on("kick")
def on_kick(data: dict[str, Any]) -> bool:
    disconnect(sid=data["sid"])
    return True


@socketio.on("close")
def on_close(data: dict[str, Any]) -> bool:
    close_room(data["room"])
    return True


@socketio.on("relay")
def relay(data: dict[str, Any]) -> bool:
    """Emit ``data["payload"]`` as ``data["event"]`` to ``data["to"]``."""
    skip = request.sid if data.get("skip_self") else data.get("skip_sid")
    socketio.server.emit(data.get("event", "relayed"), data.get("payload"),
                         to=data.get("to"), skip_sid=skip)
    return True


@socketio.on("relay_many")
def relay_many(data: dict[str, Any]) -> int:
    """Emit each ``[room, payload]`` of ``data["items"]``, in order, as
    ``data["event"]`` (one client event for many emits: no rate limit)."""
    for room, payload in data["items"]:
        socketio.server.emit(data.get("event", "relayed"), payload, to=room)
    return len(data["items"])


@socketio.on("ask")
def ask(data: dict[str, Any]) -> Any:
    """Emit with an ack to a (remote) sid; report the answer or the expiry."""
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_answer(*args: Any) -> None:
        result["answer"] = list(args)
        done.set()

    def on_timeout() -> None:
        result["expired"] = True
        done.set()

    socketio.server.emit("question", data.get("payload"), to=data["sid"],
                         callback=with_timeout(on_answer, data["timeout"],
                                               on_timeout))
    done.wait(data["timeout"] + 5)
    return result


@socketio.on("call")
def call(data: dict[str, Any]) -> Any:
    try:
        return {"answer": socketio.call("question", data.get("payload"),
                                        to=data["sid"], timeout=data["timeout"])}
    except Exception as exc:  # the timeout is what the test checks
        return {"error": type(exc).__name__}


@socketio.on("query")
def query(data: dict[str, Any]) -> Any:
    """Run one ClusterView method: ``{"op": name, "args": [...], "kwargs": {}}``."""
    view = _bus().cluster
    try:
        return {"result": getattr(view, data["op"])(*data.get("args", []),
                                                   **data.get("kwargs", {}))}
    except ClusterRequestTimeout as exc:
        return {"timeout": True, "missing": exc.missing}


@socketio.on("stats")
def stats() -> Any:
    manager = _bus()
    return {"stats": manager.stats(), "ready": manager.ready, "node": NODE,
            "host_id": manager.host_id}


@socketio.on("burst")
def burst(data: dict[str, Any]) -> int:
    """Start ``n`` concurrent tasks that each emit once to ``to``."""
    def one(i: int) -> None:
        socketio.server.emit("burst", i, to=data["to"])

    for i in range(data["n"]):
        socketio.start_background_task(one, i)
    return data["n"]
