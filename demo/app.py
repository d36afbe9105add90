"""A Flask-SocketIO chat, ported to the cluster by changing one import.

The chat is ordinary Flask-SocketIO code: Flask-Login sessions, the ``auth``
dict of the connection, rooms, ``request.sid``, the forked ``session``. The
only line of it that differs from the Flask-SocketIO original is the ``from
cluster import ...`` line (it was ``from flask_socketio import``).

Two handlers show what the cluster adds, and say so: ``online`` asks every
node who is in a room (``socketio.cluster``), and ``start_job`` hands work
to a Celery worker that reports progress to the asking client from another
process (``workers.tasks.long_job``, through the cluster's emitter); asked
to, the worker first has the page confirm the job and waits for its answer
(``Emitter.call``: worker -> page -> worker). The protocol is in the README
("The demo's protocol").

Run it on a local cluster with ``./dev up`` (or ``docker compose up``), then
open http://127.0.0.1:8000 in two browsers. ``SECRET_KEY`` must be set
(``./dev up`` generates one); the browser client is served by the nodes
themselves from the ``socket.io-client`` npm package (:mod:`demo.client`).
"""

import functools
import os

from flask import Flask, redirect, render_template, request, session, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)

from cluster import SocketIO, disconnect, emit, join_room, leave_room, rooms
from demo.client import add_client_route, require_secret_key

NODE = os.environ.get("NODE_NAME", "node")
USER_ROOM = "user:"  # each user's sockets share a room: names for the online list
MAX_STEPS = 50
# presence is a hint (the page refreshes its online list every 5 s): a
# connect or disconnect is announced in the user's first rooms only, so a
# reconnecting client costs a few rooms' traffic, not one event per room
# it ever joined (each one logged for connection state recovery)
PRESENCE_ROOMS = 10

app = Flask(__name__, static_folder=None)
app.config["SECRET_KEY"] = require_secret_key(os.environ)
add_client_route(app)
socketio = SocketIO(app)
login_manager = LoginManager(app)
login_manager.login_view = "login"


class User(UserMixin):
    def __init__(self, name):
        self.id = name
        self.name = name


@login_manager.user_loader
def load_user(user_id):
    return User(user_id)


@app.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST" and request.form.get("name", "").strip():
        login_user(User(request.form["name"].strip()[:32]))
        session["joined_rooms"] = []
        return redirect(url_for("index"))
    return render_template("login.html")


@app.route("/logout")
def logout():
    logout_user()
    return redirect(url_for("login"))


@app.route("/")
@login_required
def index():
    return render_template("index.html", name=current_user.name, node=NODE)


def authenticated_only(f):
    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            disconnect()
        else:
            return f(*args, **kwargs)
    return wrapped


def _room(data):
    return str((data or {}).get("room") or "lobby")[:64]


def _presence(room, state):
    emit("presence", {"room": room, "name": current_user.name, "state": state}, to=room)


@socketio.on("connect")
def on_connect(auth):
    if not current_user.is_authenticated:
        return False
    session["client"] = (auth or {}).get("client", "unknown")
    join_room(USER_ROOM + current_user.name)
    joined = session.get("joined_rooms", [])
    emit("status", {"text": f"{current_user.name} connected ({session['client']})",
                    "sid": request.sid, "node": NODE, "rooms": joined})
    # a resumed or recovered connection is back in its rooms: say so there
    for room in joined[:PRESENCE_ROOMS]:
        _presence(room, "joined")


@socketio.on("disconnect")
def on_disconnect(reason=None):
    if current_user.is_authenticated:
        for room in session.get("joined_rooms", [])[:PRESENCE_ROOMS]:
            _presence(room, "left")


@socketio.on("join")
@authenticated_only
def on_join(data):
    room = _room(data)
    join_room(room)
    session["joined_rooms"] = sorted(set(session.get("joined_rooms", [])) | {room})
    emit("status", {"text": f"{current_user.name} joined {room}"}, to=room)
    _presence(room, "joined")
    return {"rooms": session["joined_rooms"]}


@socketio.on("leave")
@authenticated_only
def on_leave(data):
    room = _room(data)
    leave_room(room)
    session["joined_rooms"] = sorted(set(session.get("joined_rooms", [])) - {room})
    emit("status", {"text": f"{current_user.name} left {room}"}, to=room)
    _presence(room, "left")
    return {"rooms": session["joined_rooms"]}


@socketio.on("say")
@authenticated_only
def on_say(data):
    message = {"from": current_user.name, "text": str(data["text"])[:500], "node": NODE}
    if data.get("room"):
        emit("chat", message, to=data["room"])
    else:
        emit("chat", message, broadcast=True)
    session["sent"] = session.get("sent", 0) + 1
    return {"sent": session["sent"]}


@socketio.on("whoami")
@authenticated_only
def on_whoami():
    return {"name": current_user.name, "sid": request.sid, "client": session.get("client"),
            "sent": session.get("sent", 0), "rooms": session.get("joined_rooms", []),
            "node": NODE}


# -- what the cluster adds -----------------------------------------------------

@socketio.on("online")
@authenticated_only
def on_online(data):
    """Who is in the room, on every node: ``{"room", "members": [{name, sid, node}]}``."""
    room = _room(data)
    try:
        sockets = socketio.cluster.sockets(rooms=[room])
    except ValueError:
        # socketio.cluster raises ConfigurationError (a ValueError) without a
        # message queue: a single process answers for itself
        sockets = [{"sid": sid, "node": NODE, "rooms": rooms(sid)}
                   for sid, _ in socketio.server.manager.get_participants("/", room)]
    members = []
    for entry in sockets:
        names = [r[len(USER_ROOM):] for r in entry["rooms"]
                 if isinstance(r, str) and r.startswith(USER_ROOM)]
        if names:
            members.append({"name": names[0], "sid": entry["sid"], "node": entry["node"]})
    members.sort(key=lambda m: (m["name"], m["sid"]))
    return {"room": room, "members": members}


@socketio.on("start_job")
@authenticated_only
def on_start_job(data):
    """Queue a Celery job reporting to this client alone; ack ``{"job_id"}``.
    With ``{"confirm": true}`` the worker asks the page (``job_confirm``)
    before it starts."""
    try:
        steps = max(1, min(MAX_STEPS, int((data or {}).get("steps", 10))))
    except (TypeError, ValueError):
        return {"error": "steps must be a whole number"}
    try:
        from workers.tasks import long_job  # Celery is imported on first use only
    except ImportError as exc:
        return {"error": f"the worker's tasks cannot be imported: {exc}"}
    except ValueError as exc:
        # workers.ConfigurationError: no broker configured for this node
        return {"error": str(exc)}
    result = long_job.delay(to=request.sid, steps=steps, step_seconds=0.3,
                            confirm=bool((data or {}).get("confirm")))
    return {"job_id": result.id}


if __name__ == "__main__":
    socketio.run(app, debug=True)
