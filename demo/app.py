"""A Flask-SocketIO chat, ported to the cluster by changing one import.

Everything below is ordinary Flask-SocketIO code: Flask-Login sessions, the
``auth`` dict of the connection, rooms, ``request.sid``, the forked
``session``. The only line that differs from the Flask-SocketIO original is
the ``from cluster import ...`` line (it was ``from flask_socketio import``).

Run it on a local cluster with ``./dev up`` (or ``docker compose up``), then
open http://127.0.0.1:8000 in two browsers.
"""

import functools
import os

from flask import Flask, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_login import logout_user

from cluster import SocketIO, disconnect, emit, join_room, leave_room, rooms

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change-me-in-production")
app.config["SOCKETIO_CLIENT_URL"] = os.environ.get(
    "SOCKETIO_CLIENT_URL", "https://cdn.socket.io/4.8.1/socket.io.min.js")
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
    if request.method == "POST" and request.form.get("name"):
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
    return render_template("index.html", name=current_user.name,
                           client_url=app.config["SOCKETIO_CLIENT_URL"],
                           node=os.environ.get("NODE_NAME", "node"))


def authenticated_only(f):
    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            disconnect()
        else:
            return f(*args, **kwargs)
    return wrapped


@socketio.on("connect")
def on_connect(auth):
    if not current_user.is_authenticated:
        return False
    session["client"] = (auth or {}).get("client", "unknown")
    emit("status", {"text": f"{current_user.name} connected ({session['client']})",
                    "sid": request.sid, "node": os.environ.get("NODE_NAME", "node"),
                    "rooms": sorted(r for r in rooms() if r != request.sid)})


@socketio.on("join")
@authenticated_only
def on_join(data):
    room = str(data["room"])[:64]
    join_room(room)
    session["joined_rooms"] = sorted(set(session.get("joined_rooms", [])) | {room})
    emit("status", {"text": f"{current_user.name} joined {room}"}, to=room)
    return {"rooms": session["joined_rooms"]}


@socketio.on("leave")
@authenticated_only
def on_leave(data):
    room = str(data["room"])[:64]
    leave_room(room)
    session["joined_rooms"] = sorted(set(session.get("joined_rooms", [])) - {room})
    emit("status", {"text": f"{current_user.name} left {room}"}, to=room)
    return {"rooms": session["joined_rooms"]}


@socketio.on("say")
@authenticated_only
def on_say(data):
    message = {"from": current_user.name, "text": str(data["text"])[:500],
               "node": os.environ.get("NODE_NAME", "node")}
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
            "node": os.environ.get("NODE_NAME", "node")}


if __name__ == "__main__":
    socketio.run(app, debug=True)
