"""A stand-in socket node for the devtools tests: a stdlib HTTP server speaking
the runner's command line, so the tests exercise the process management, not
the node. :func:`install` writes it as the ``fakenode`` package."""

from __future__ import annotations

import textwrap
from pathlib import Path

import requests

__all__ = ["FAKE_NODE", "install", "served_by"]

# `python -m fakenode node --app APP --host H --port P [--message-queue URL]`.
# GET / answers the node's port; /info a JSON description; /readyz turns 503
# after POST /drain; GET /ws with an Upgrade header switches to a raw echo.
FAKE_NODE = textwrap.dedent(
    """
    import argparse, base64, hashlib, json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["node"])
    parser.add_argument("--app", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--message-queue")
    parser.add_argument("--log-format")
    args = parser.parse_args()
    if args.app == "fail":
        print("stand-in: cannot load app 'fail'", file=sys.stderr)
        sys.exit(3)
    if args.app == "hang":
        time.sleep(3600)
    state = {"ready": True}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, "ok")
            elif self.path == "/readyz":
                self.reply(200 if state["ready"] else 503, "")
            elif self.path == "/info":
                self.reply(200, json.dumps({
                    "port": args.port, "app": args.app, "pid": os.getpid(),
                    "message_queue": args.message_queue,
                    "env_redis_url": os.environ.get("REDIS_URL"),
                    "cookie": self.headers.get("Cookie"),
                }))
            elif self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
                key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept",
                                 base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
                self.end_headers()
                self.wfile.flush()
                while data := self.connection.recv(4096):
                    self.connection.sendall(data)
                self.close_connection = True
            else:
                self.reply(200, str(args.port))

        def do_POST(self):
            state["ready"] = False
            self.reply(200, "draining")

        def log_message(self, fmt, *a):
            if "/readyz" not in self.requestline:
                super().log_message(fmt, *a)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
    """
)


def install(root: Path) -> str:
    """Write the ``fakenode`` package under ``root``; return ``root`` for PYTHONPATH."""
    (root / "fakenode").mkdir()
    (root / "fakenode" / "__init__.py").write_text("")
    (root / "fakenode" / "__main__.py").write_text(FAKE_NODE)
    return str(root)


def served_by(session: requests.Session, url: str) -> int:
    """The port of the node that answered ``url`` (the stand-in replies with it)."""
    response = session.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return int(response.text)
