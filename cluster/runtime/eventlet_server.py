"""A node's WSGI server on eventlet: ``eventlet.wsgi`` with the node's limits.

What each limit is for is told in :mod:`cluster.runner.serve`; this module
is how eventlet enforces them:

- buffers: eventlet keeps a buffered reader (8 KiB) and writer (16 KiB) for
  every connection for its whole life, though a websocket uses neither
  after its handshake: 24 KiB of each idle websocket's ~54 KiB. 2 KiB each
  still holds an HTTP request head or a polling response in one read or
  write; larger bodies bypass the buffers anyway;
- the head deadline: eventlet offers only per-operation socket timeouts
  (``socket_timeout``, a numeric ``keepalive``), so an ``eventlet.Timeout``
  is armed around the read of the head and cancelled in ``get_environ``,
  which eventlet calls once the head is complete and before the
  application runs;
- the idle timeout: eventlet's ``socket_timeout`` (restarted by every
  byte), plus a wait for the next request's first byte on a kept-alive
  connection;
- the body deadline: a copy of eventlet's request input whose reads share
  one budget (:func:`deadline_input`);
- the websocket upgrade: the connection's socket is handed to the node's
  own handshake (:data:`cluster.runtime.UPGRADE_SOCKET`), and eventlet is
  told the response was written (as its own websocket module does).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import eventlet
import eventlet.wsgi

from cluster.runner.body_deadline import TIMEOUT_RESPONSE, BodyDeadlineExceeded
from cluster.runtime import UPGRADE_SOCKET, ServerOptions
from cluster.runtime.body_reader import BodyBudget, ChargedReads

__all__ = ["EventletServer", "deadline_input", "http_protocol", "listen", "serve"]

logger = logging.getLogger("cluster.node")


def listen(host: str, port: int, *, tcp_nodelay: bool = True, backlog: int = 2048) -> Any:
    """An eventlet listening socket with the node's socket options."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = eventlet.listen((host, port), family=family, backlog=backlog, reuse_addr=True)
    if tcp_nodelay:
        # accepted sockets inherit TCP_NODELAY from the listener on Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def http_protocol(header_timeout: float | None = None, idle_timeout: float | None = None,
                  body_timeout: float | None = None) -> Any:
    """eventlet's ``HttpProtocol`` with small buffers, the node's request
    timeouts (``None`` switches one off) and the upgrade hand-off."""

    class NodeHttpProtocol(eventlet.wsgi.HttpProtocol):  # type: ignore[misc]  # eventlet is untyped
        rbufsize = 2048
        wbufsize = 2048
        _head_timer: Any = None
        _requests = 0

        def handle_one_request(self) -> None:
            if self._requests and not self._next_request_arrives():
                self.close_connection = 1
                return
            self._requests += 1
            timer = self._head_timer = (
                eventlet.Timeout(header_timeout) if header_timeout else None)
            try:
                super().handle_one_request()
            except eventlet.Timeout as exc:
                if exc is not timer:
                    raise
                self.close_connection = 1
                # debug only: a flood of these must not flood the log
                logger.debug("closed %s: no complete request head within %.1f s",
                             self.client_address, header_timeout)
            except BodyDeadlineExceeded:
                self.close_connection = 1
                self._refuse_slow_body()
            finally:
                if timer is not None:
                    timer.cancel()
                self._head_timer = None

        def get_environ(self) -> dict[str, Any]:
            # the head is complete: the request now belongs to the application
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            environ: dict[str, Any] = super().get_environ()
            if environ.get("HTTP_UPGRADE"):
                environ[UPGRADE_SOCKET] = self._upgrade_socket(environ)
            elif body_timeout:
                # eventlet reads eventlet.input itself (discarding an unread
                # body), so both names get the input with the deadline
                environ["wsgi.input"] = environ["eventlet.input"] = deadline_input(
                    environ["eventlet.input"], body_timeout, self._body_expired)
            return environ

        def _upgrade_socket(self, environ: dict[str, Any]) -> Callable[[], Any]:
            def take() -> Any:
                # eventlet writes no response and closes the connection when
                # the application returns (what its own websocket module does)
                eventlet.wsgi.WSGI_LOCAL.already_handled = True
                set_idle = environ.get("eventlet.set_idle")
                if set_idle is not None:
                    set_idle()  # not a request in progress for a graceful stop
                return environ["eventlet.input"].get_socket()

            return take

        def _body_expired(self) -> None:
            # no discard of the rest of the body: the connection closes
            self.close_connection = 1

        def _refuse_slow_body(self) -> None:
            environ = getattr(self, "environ", None) or {}
            # eventlet's per-response list, non-empty once the status line is out
            started = getattr(environ.get("eventlet.input"), "headers_sent", None)
            if not started:
                try:
                    self.wfile.write(TIMEOUT_RESPONSE)
                    self.wfile.flush()
                except OSError:
                    pass  # the client is gone: nothing to tell it
            # debug only, like the head deadline: the client chose to be slow
            logger.debug("closed %s: request body not received within %.1f s",
                         self.client_address, body_timeout)

        def _next_request_arrives(self) -> bool:
            """Wait (up to the idle timeout) for the next request's first byte."""
            if self.rfile.closed:
                return False
            if not idle_timeout:
                return True
            timer = eventlet.Timeout(idle_timeout)
            try:
                return bool(self.rfile.peek(1))  # b"": the client closed
            except eventlet.Timeout as exc:
                if exc is not timer:
                    raise
                return False
            except OSError:  # reset by the peer, or the socket timeout
                return False
            finally:
                timer.cancel()

    return NodeHttpProtocol


def deadline_input(original: Any, budget: float, on_expired: Callable[[], None]) -> Any:
    """A copy of eventlet's request input ``original`` whose reads share
    ``budget`` seconds (see :mod:`cluster.runner.body_deadline`).

    ``on_expired`` runs once, before :class:`BodyDeadlineExceeded` is
    raised, so that the protocol marks the connection for closing (eventlet
    would otherwise try to discard the rest of the body, slowly).
    """
    return DeadlineInput(
        original.rfile, original.content_length, original.get_socket(), wfile=original.wfile,
        wfile_line=original.wfile_line, chunked_input=original.chunked_input,
        body_budget=BodyBudget(budget, on_expired, start_timer=eventlet.Timeout,
                               stop_timer=eventlet.Timeout.cancel))


class DeadlineInput(ChargedReads, eventlet.wsgi.Input):  # type: ignore[misc]  # eventlet is untyped
    """eventlet's request input with its reads charged to ``body_budget``."""

    def __init__(self, *args: Any, body_budget: BodyBudget, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_budget = body_budget


class EventletServer:
    """``eventlet.wsgi.server`` running in a green thread, on its listener."""

    def __init__(self, green_thread: Any, listener: Any) -> None:
        self.green_thread = green_thread
        self.listener = listener

    def stop(self) -> None:
        self.green_thread.kill()
        self.listener.close()


def serve(wsgi_app: Callable[..., Any], host: str, port: int,
          options: ServerOptions) -> EventletServer:
    """Listen on ``host:port`` now and serve ``wsgi_app`` from a green thread."""
    sock = listen(host, port, tcp_nodelay=options.tcp_nodelay, backlog=options.backlog)
    green_thread = eventlet.spawn(
        eventlet.wsgi.server, sock, wsgi_app,
        max_size=options.max_connections,
        log_output=options.log_output, log=logging.getLogger("cluster.access"),
        # per socket operation, restarted by every byte: bounds a stalled
        # body or response; websockets replace it with their ping timeout
        socket_timeout=options.idle_timeout or None, debug=False,
        protocol=http_protocol(options.header_timeout, options.idle_timeout,
                               options.body_timeout),
    )
    return EventletServer(green_thread, sock)
