"""What the demo needs around its handlers: its secret key and the browser client.

The Socket.IO browser client is the official ``socket.io-client`` npm
package, pinned by ``demo/js/package-lock.json`` and installed at setup or
image build time, never committed and never loaded from a CDN (the page must
work on a machine without internet access):

- ``./dev setup`` runs ``npm ci`` in ``demo/js``;
- the Dockerfile's first stage runs ``python -m demo.fetch_client``, which
  downloads the locked tarball and checks its integrity hash.

Either way the file lands at :data:`CLIENT_JS`, and every node serves it at
``/static/socket.io.min.js`` (the page refers to it by a relative URL). When
it is missing, that route answers 503 with the command that installs it, so
a blank page never hides the cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flask import Flask, Response, send_file

__all__ = ["CLIENT_JS", "CLIENT_ROUTE", "MissingSecretKey", "add_client_route",
           "require_secret_key"]

JS_DIR = Path(__file__).resolve().parent / "js"
#: where ``npm ci`` (or ``demo.fetch_client``) puts the browser client
CLIENT_JS = JS_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
#: the URL path every node serves it at
CLIENT_ROUTE = "/static/socket.io.min.js"


class MissingSecretKey(RuntimeError):
    """``SECRET_KEY`` is not set: the demo refuses a well-known fallback."""


def require_secret_key(environ: Mapping[str, str]) -> str:
    """``SECRET_KEY`` from ``environ``; raises :class:`MissingSecretKey` if unset.

    A default key would let anyone who read it forge a login cookie for any
    user, so there is none. ``./dev up`` generates one per run.
    """
    key = environ.get("SECRET_KEY", "").strip()
    if not key:
        raise MissingSecretKey(
            "SECRET_KEY is not set: the demo signs login cookies with it and has no default. "
            "Set it to a long random value on every node, e.g. "
            "export SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') "
            "(in a .env file for docker compose); ./dev up generates one for you.")
    return key


def add_client_route(app: Flask, path: Path = CLIENT_JS) -> None:
    """Serve the browser client at :data:`CLIENT_ROUTE` on ``app``."""

    def socketio_client() -> Response:
        if not path.is_file():
            return Response(
                f"// socket.io-client is not installed: {path} is missing.\n"
                "// Run ./dev setup (it runs `npm ci` in demo/js), or build the image "
                "with the Dockerfile.\n",
                status=503, mimetype="text/javascript")
        # the lock pins the version, so a day of caching is safe
        return send_file(path, mimetype="text/javascript", max_age=86400)

    app.add_url_rule(CLIENT_ROUTE, "socketio_client", socketio_client)
