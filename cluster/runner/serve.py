"""Serving a node: its runtime's WSGI server with production defaults.

The server is eventlet's or gevent's (:mod:`cluster.runtime`: how each
enforces what follows is in :mod:`cluster.runtime.eventlet_server` and
:mod:`cluster.runtime.gevent_server`). Defaults a user would otherwise find
the hard way:

- ``max_connections`` (default 100,000): eventlet serves at most 1,024
  connections unless told otherwise, and connection 1,025 hangs silently.
  The process's open-file limit is raised to its hard limit for the same
  reason.
- ``tcp_nodelay`` (default on) on the listening socket, inherited by every
  accepted socket: with Nagle's algorithm a second small frame sent right
  after a first waits for the peer's delayed ACK (~40 ms).
- permessage-deflate is declined unless ``websocket_compression=True``
  (see :class:`DeclineCompressionMiddleware`).
- ``http_header_timeout`` (default 10 s) and ``http_idle_timeout`` (default
  60 s): without them (eventlet's ``socket_timeout=None``, gevent's
  socket without a timeout) a connection that never completes its request
  head is kept forever, and with 100,000 connections allowed one stranger
  can hold them all. The header timeout is a deadline for the whole head,
  from the connection's accept (or the next request's first byte) to its
  blank line: a socket timeout restarts with every byte, so a client
  dribbling one byte every few seconds would never hit it. The idle
  timeout bounds how long a kept-alive connection waits for its next
  request, and how long a body or a response may stall. Neither touches
  what the application does once the head is read: a long-polling GET
  waits in python-engineio (up to ``ping_interval``) without reading the
  socket, and an upgraded websocket sets its own socket timeout
  (``ping_interval + ping_timeout``, see
  :mod:`cluster.node.websocket_transport`).
- ``http_body_timeout`` (default 30 s): the total time a request may spend
  waiting for its body; a body dribbled one byte at a time gets ``408``.
  See :mod:`.body_deadline`.
- SIGTERM/SIGINT stop the node: readiness turns false, the listener closes,
  clients are disconnected (they reconnect to another node) and pending
  session writes are flushed before the process exits.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cluster.bus.features import bus_features
from cluster.config import (
    DEFAULT_HTTP_BODY_TIMEOUT,
    DEFAULT_HTTP_HEADER_TIMEOUT,
    DEFAULT_HTTP_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from cluster.node.client_closing import close_spread
from cluster.runner.body_deadline import PollingBodyMiddleware
from cluster.runtime import MODES, Runtime, ServerOptions

if TYPE_CHECKING:
    import flask

    from cluster.config import TransportConfig
    from cluster.flask_integration.extension import SocketIO

logger = logging.getLogger("cluster.node")

__all__ = [
    "DEFAULT_BACKLOG", "DEFAULT_HTTP_BODY_TIMEOUT", "DEFAULT_HTTP_HEADER_TIMEOUT",
    "DEFAULT_HTTP_IDLE_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "DeclineCompressionMiddleware",
    "drain_node", "raise_open_file_limit", "run_app", "serve_node", "server_options",
    "shutdown_node", "stop_app", "watch_stop_signals",
]

#: the listening socket's accept queue
DEFAULT_BACKLOG = 2048


class DeclineCompressionMiddleware:
    """Hide the client's ``Sec-WebSocket-Extensions`` offer from the server.

    Browsers always offer permessage-deflate and the node's handshake
    accepts it when offered; per-message compression then costs 2.5-3x CPU
    and memory on every delivery. Removing the offer makes the handshake
    decline it.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]],
                 compression_allowed: Callable[[], bool]) -> None:
        self.wsgi_app = wsgi_app
        # asked per request: the node runner may switch it on after import
        self.compression_allowed = compression_allowed

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.compression_allowed():
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return self.wsgi_app(environ, start_response)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("Could not raise the open-file limit above %s", soft)
    return soft


def watch_stop_signals(socketio: SocketIO, green: Runtime) -> Callable[[], int]:
    """Watch for SIGTERM and SIGINT; the function returned waits (green)
    for the first one and returns its number.

    A Python signal handler alone is not enough under a green hub: it runs
    while the hub sleeps in ``epoll`` and whatever it wakes only runs when
    that sleep ends, which can be many seconds later. The signal number is
    therefore also written to a pipe (``signal.set_wakeup_fd``) that a green
    thread watches, so the hub wakes at once.
    """
    import os

    stop_requested = green.event()
    received: list[int] = []
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)

    def note_signal(_signum: int, _frame: Any) -> None:
        # runs inside the hub: flags only, no logging (its lock may be held)
        socketio.node_state.draining = True

    def wait_for_signal() -> None:
        while True:
            green.wait_readable(read_fd)
            try:
                data = os.read(read_fd, 16)
            except BlockingIOError:
                continue
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT) and not received:
                    received.append(signum)
                    stop_requested.set()

    def wait() -> int:
        stop_requested.wait()
        return received[0]

    signal.signal(signal.SIGTERM, note_signal)
    signal.signal(signal.SIGINT, note_signal)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    green.spawn(wait_for_signal)
    return wait


#: ``0`` keeps every upgraded websocket on the green thread that served its
#: upgrade (see ServerOptions.detach_websockets); anything else, or unset,
#: lets them detach
DETACH_ENV = "CLUSTER_DETACHED_WEBSOCKETS"


def server_options(transport: TransportConfig, log_output: bool = False) -> ServerOptions:
    """The WSGI server's settings from the node's transport configuration."""
    return ServerOptions(
        max_connections=transport.max_connections, tcp_nodelay=transport.tcp_nodelay,
        backlog=DEFAULT_BACKLOG, header_timeout=transport.http_header_timeout,
        idle_timeout=transport.http_idle_timeout, body_timeout=transport.http_body_timeout,
        log_output=log_output,
        detach_websockets=os.environ.get(DETACH_ENV, "1").strip() != "0")


def serve_node(socketio: SocketIO, wsgi_app: Callable[..., Any], host: str, port: int, *,
               log_output: bool = False, drain_seconds: float = 10.0,
               drain_spread_seconds: float = 0.0, advertise_url: str | None = None,
               forwarding: bool = True) -> None:
    """Serve ``wsgi_app`` on the runtime of the server's ``async_mode``
    (eventlet or gevent) until SIGTERM/SIGINT, then stop gracefully
    (:func:`drain_node` with ``drain_seconds`` and ``drain_spread_seconds``).

    With ``forwarding`` (and a signed cluster bus) a polling request or
    WebSocket upgrade for a session of another node is forwarded to it
    (:mod:`cluster.node.forwarding`), so the balancer needs no sticky
    sessions; ``advertise_url`` is how the other nodes reach this one
    (default ``http://<host>:<port>``, see
    :func:`~cluster.node.forwarding_setup.default_advertise_url`)."""
    green = socketio.server.eio.runtime
    if green is None:
        raise RuntimeError(f"async_mode {socketio.server.async_mode!r} has no green "
                           "runtime to serve on: use eventlet or gevent.")
    transport = socketio.server.config.transport
    raise_open_file_limit()
    if forwarding:  # before the bus starts: its first heartbeat carries the address
        from cluster.node.forwarding_setup import default_advertise_url, install_forwarding

        wsgi_app = install_forwarding(socketio, wsgi_app,
                                      advertise_url or default_advertise_url(host, port))
    socketio.server.initialize_manager()
    if transport.http_body_timeout:
        eio = socketio.server.eio
        wsgi_app = PollingBodyMiddleware(wsgi_app, transport.path,
                                         lambda: int(eio.max_http_buffer_size))
    server = green.serve(wsgi_app, host, port, server_options(transport, log_output))
    wait_for_stop = watch_stop_signals(socketio, green)
    socketio.wsgi_server = server
    logger.info("Node listening on http://%s:%s (%s)", host, port, green.name)
    signum = wait_for_stop()
    logger.info("Received %s: draining the node", signal.Signals(signum).name)
    # new Socket.IO connections are refused from now on (see HealthMiddleware)
    # while the open ones are served until the drain closes them; stopping
    # the WSGI server first would cut every websocket at once
    shutdown_node(socketio, drain_seconds=drain_seconds, spread_seconds=drain_spread_seconds)
    server.stop()
    logger.info("Node stopped")


def drain_node(socketio: SocketIO, grace_seconds: float, spread_seconds: float = 0.0) -> None:
    """Take a node out of the cluster without losing anything.

    In order: ``/readyz`` turns 503 and new Socket.IO connections are
    refused; handlers already running get up to ``grace_seconds`` to finish
    (their session writes are write-through, so once they return nothing is
    pending); every client is then closed at the Engine.IO level, not with a
    Socket.IO DISCONNECT (which tells clients not to come back), so they
    reconnect through the load balancer to another node and resume or
    recover there, the closes spread over up to ``spread_seconds`` with
    jitter (:mod:`cluster.node.client_closing`; 0: all at once, the default
    here, while ``python -m cluster node`` spreads over 5 s); finally the
    bus publishes what is still queued and says goodbye. The whole drain
    takes at most about ``grace_seconds + spread_seconds``.
    """
    deadline = time.monotonic() + grace_seconds
    socketio.node_state.draining = True
    runner = socketio.runner
    if not runner.wait_idle(timeout=max(0.0, deadline - time.monotonic())):
        logger.warning("drain: %d handler(s) still running after %.1f s; closing anyway",
                       runner.in_flight, grace_seconds)
    # the flush below gets what is left of the grace, plus the spread window
    deadline = max(deadline, time.monotonic()) + spread_seconds
    closed = close_spread(socketio.server.eio, spread_seconds, socketio.server.sleep)
    logger.info("drain: closed %d connection(s); they reconnect to other nodes", closed)
    if socketio.sessions is not None:
        socketio.sessions.flush(timeout=max(0.0, deadline - time.monotonic()))
    bus_features(socketio.server.manager).close(timeout=max(0.5, deadline - time.monotonic()))


def shutdown_node(socketio: SocketIO, *, drain_seconds: float,
                  spread_seconds: float = 0.0) -> None:
    """Disconnect every local client and flush what must survive the node."""
    drain_node(socketio, drain_seconds, spread_seconds)
    socketio.server.shutdown()


def run_app(socketio: SocketIO, app: flask.Flask | None, host: str | None = None,
            port: int | None = None, **kwargs: Any) -> None:
    """``SocketIO.run``: the node's server on eventlet or gevent, or
    Werkzeug's in threading mode."""
    if app is None:
        raise RuntimeError("SocketIO.run() needs the Flask application.")
    # Flask-SocketIO's reloader arguments, in the form Werkzeug takes them
    reloader_options = dict(kwargs.pop("reloader_options", None) or {})
    extra_files = kwargs.pop("extra_files", None)
    if extra_files:
        reloader_options["extra_files"] = extra_files
    kwargs.update(reloader_options)
    host = host or "127.0.0.1"
    if port is None:
        server_name = app.config.get("SERVER_NAME")
        port = int(server_name.rsplit(":", 1)[1]) if server_name and ":" in server_name else 5000
    debug = kwargs.pop("debug", app.debug)
    log_output = kwargs.pop("log_output", debug)
    use_reloader = kwargs.pop("use_reloader", debug)
    allow_unsafe_werkzeug = kwargs.pop("allow_unsafe_werkzeug", False)
    app.debug = debug
    async_mode = socketio.server.async_mode
    if async_mode in MODES:
        serve_node(socketio, app, host, port, log_output=log_output,
                   drain_seconds=kwargs.pop("drain_seconds", 10.0),
                   drain_spread_seconds=kwargs.pop("drain_spread_seconds", 0.0))
        return
    if async_mode != "threading":
        raise RuntimeError(f"async_mode {async_mode!r} is not supported by SocketIO.run().")
    if not debug and not allow_unsafe_werkzeug:
        raise RuntimeError(
            "Werkzeug's development server is not meant for production. Run the "
            "node with `python -m cluster node --app MODULE:ATTR` (eventlet or gevent), or "
            "pass allow_unsafe_werkzeug=True to run() to use it anyway."
        )
    app.run(host=host, port=port, threaded=True, use_reloader=use_reloader, **kwargs)


def stop_app(socketio: SocketIO) -> None:
    """Stop a server started by :func:`run_app` (eventlet or gevent mode)."""
    server = socketio.wsgi_server
    if server is None:
        raise RuntimeError("stop() only stops a server started by SocketIO.run() under "
                           "eventlet or gevent.")
    shutdown_node(socketio, drain_seconds=0)
    server.stop()
