"""The Flask-SocketIO peer of the fan-out benchmark: Flask-SocketIO 5.7 with
its RedisManager (``message_queue=``), under eventlet, run the way its
documentation says (``socketio.run``)::

    python -m benchmarks.peers.flask_socketio_app --port 5000 \\
        --message-queue redis://127.0.0.1:6390/0

The application is ``benchmarks/fanout_app.py`` with the import changed back
to ``flask_socketio``; ``GET /readyz`` (a plain Flask route) lets HAProxy
check it. Flask-SocketIO's defaults are kept (Nagle on, permessage-deflate
accepted) except eventlet's connection ceiling: ``max_size`` is raised from
1,024 so the peer can hold the benchmark's 10,000 websockets.

It needs the ``bench`` extra (``pip install -e '.[bench]'``); it is never
a dependency of the project.
"""

from __future__ import annotations

import eventlet

# before Flask, redis-py and python-socketio are imported, as Flask-SocketIO requires;
# hence the imports below it (noqa: E402: they must follow the monkey-patching)
eventlet.monkey_patch()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, emit, join_room  # noqa: E402

# eventlet's wsgi server accepts at most this many connections at once
MAX_CONNECTIONS = 100_000

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "bench-secret-key")
socketio = SocketIO()


@socketio.on("join")
def on_join(room: str) -> dict[str, Any]:
    join_room(room)
    return {"node": os.getpid()}


@socketio.on("publish")
def on_publish(message: dict[str, Any]) -> None:
    emit("msg", message, to=message["r"])


@app.route("/readyz")
def readyz() -> str:
    return "ok\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.flask_socketio_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--message-queue", default=None, metavar="URL",
                        help="RedisManager URL (none: a single process)")
    args = parser.parse_args(argv)
    socketio.init_app(app, message_queue=args.message_queue, async_mode="eventlet")
    print(f"flask-socketio {args.host}:{args.port} pid {os.getpid()}", flush=True)
    socketio.run(app, host=args.host, port=args.port, max_size=MAX_CONNECTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
