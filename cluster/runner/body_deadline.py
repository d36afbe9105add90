"""A deadline on HTTP request bodies (``http_body_timeout``).

The node's servers bound each socket read (the node's
``http_idle_timeout``), and that timer restarts with every byte: a client
sending a body one byte every two seconds is never cut, and holds a green
thread and a connection for as long as it likes. The node's header deadline
(:mod:`cluster.runtime.eventlet_server`, :mod:`cluster.runtime.gevent_server`)
ends when the head is complete, so the body needs its own. Each server
gives its request input the deadline its own way; the budget's accounting
is :class:`cluster.runtime.body_reader.BodyBudget`, and this module holds
what the servers and the runner share (the exception, the 408 response,
the polling middleware).

The deadline is a *budget of waiting*: the total time one request may spend
blocked reading its body, counted only while the application (or the
server, discarding an unread body before the next keep-alive request) waits
for body bytes. Time the application spends on other work is not charged, so a
handler that does something slow before reading ``request.data`` is not
punished, and a long-polling GET (no body) never touches it.

Default 30 s (:data:`cluster.config.DEFAULT_HTTP_BODY_TIMEOUT`): an
Engine.IO polling POST is a few hundred bytes, and even a full
``max_http_buffer_size`` body (1 MB) arrives in it at 35 KB/s; an
application taking large uploads over slow links raises it (or switches it
off with ``0``/``None`` and relies on its balancer).

When the budget runs out the read raises :class:`BodyDeadlineExceeded`. It
derives from ``BaseException``, as eventlet's and gevent's ``Timeout`` do,
so that an application's ``except Exception`` cannot swallow it and go on
with half a body, and so that the server's own handler (which turns
``Exception`` into a 500 and logs a traceback per request) lets it through
to the node's protocol, which answers ``408`` (when no response has
started) and closes the connection. python-engineio is the exception that
proves the rule: its polling POST handler has a bare ``except`` that would
log a traceback and answer ``200``, so :class:`PollingBodyMiddleware` reads a polling POST's
body (bounded by ``max_http_buffer_size``) before python-engineio runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TIMEOUT_RESPONSE", "BodyDeadlineExceeded", "PollingBodyMiddleware"]

#: what the node answers when a body misses its deadline (no response yet)
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 34\r\nConnection: close\r\n\r\n"
                    b"request body not received in time\n")


class BodyDeadlineExceeded(BaseException):  # noqa: N818  # like the libraries' Timeout
    """The request body was not received within the node's body deadline."""


class PollingBodyMiddleware:
    """Read an Engine.IO polling POST's body before python-engineio does.

    The read runs under the body deadline here, outside python-engineio's
    catch-all handler, so a body that misses it ends in ``408`` and a
    closed connection rather than a logged traceback and ``200 OK``. Only
    bodies with a ``Content-Length`` of at most ``max_size()`` bytes are
    read ahead (python-engineio refuses larger ones without reading them,
    and reads nothing of a body without a length).
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], socketio_path: str,
                 max_size: Callable[[], int]) -> None:
        self.wsgi_app = wsgi_app
        self.socketio_path = socketio_path.strip("/")
        self.max_size = max_size

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") == "POST"
                and environ.get("PATH_INFO", "").strip("/").startswith(self.socketio_path)):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0  # python-engineio refuses it
            if 0 < length <= self.max_size():
                environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length))
        return self.wsgi_app(environ, start_response)
