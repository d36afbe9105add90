"""A node's WSGI server on gevent: ``gevent.pywsgi`` with the node's limits.

The same limits as on eventlet (:mod:`.eventlet_server`; what each is for
is told in :mod:`cluster.runner.serve`), the gevent way:

- ``max_connections``: the server spawns each connection's handler from a
  pool of that size (past it, new connections wait in the accept queue);
- buffers: the handler reads through a 2 KiB buffer instead of the 8 KiB
  default, and writes straight to the socket;
- the head deadline: a ``gevent.Timeout`` armed around the read of the
  head and cancelled in ``get_environ``, once the head is complete;
- the idle timeout: the accepted socket's timeout (restarted by every
  byte), plus a wait for the next request's first byte on a kept-alive
  connection;
- the body deadline: a request input whose reads share one budget; past
  it the node answers ``408`` (gevent would answer 500 and log a
  traceback) and closes without reading the rest of the body;
- the websocket upgrade: pywsgi has none of its own; the connection's
  socket is handed to the node's handshake
  (:data:`cluster.runtime.UPGRADE_SOCKET`) and pywsgi writes nothing more;
- detached websockets (:data:`cluster.runtime.UPGRADE_DETACH`): the
  connection's green thread ends while its socket stays open (pywsgi and
  the server close a connection's socket once its handler ends: the
  handler drops its reference first and the server skips it), and the
  connection keeps its slot of ``max_connections`` (:class:`ConnectionSlots`)
  until the websocket closes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import gevent.pywsgi
import gevent.socket
import greenlet

from cluster.runner.body_deadline import TIMEOUT_RESPONSE, BodyDeadlineExceeded
from cluster.runtime import (
    UPGRADE_DETACH,
    UPGRADE_SOCKET,
    ServerOptions,
    detached_environ,
    once,
)
from cluster.runtime.body_reader import BodyBudget, ChargedReads

__all__ = ["ConnectionSlots", "GeventServer", "NodeWSGIServer", "handler_class", "listen",
           "serve"]

logger = logging.getLogger("cluster.node")

#: the request reader's buffer (see the module doc)
READ_BUFFER = 2048


def listen(host: str, port: int, *, tcp_nodelay: bool = True, backlog: int = 2048) -> Any:
    """A gevent listening socket with the node's socket options."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gevent.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if tcp_nodelay:
            # accepted sockets inherit TCP_NODELAY from the listener on Linux
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class ConnectionSlots(gevent.pool.Pool):  # type: ignore[misc]  # gevent is untyped
    """The server's pool: at most ``size`` connections, detached websockets
    included (gevent's ``Pool`` counts green threads, and a detached
    websocket has none).

    The server stops accepting while the pool is full (new connections wait
    in the listener's accept queue) and starts again when a slot is given
    back. A connection's green thread gives its slot back when it ends,
    unless it detached (:meth:`detach`): then whoever holds the detached
    connection gives it back, once, through the callable :meth:`detach`
    returned. (The slots are the pool's semaphore, which gevent's server
    itself waits on to start accepting again.)
    """

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._detaching: set[Any] = set()
        self.detached = 0

    def free_count(self) -> int:
        # the semaphore, not the green threads: detached websockets hold slots
        return int(self._semaphore.counter)

    def _discard(self, green_thread: Any) -> None:
        if green_thread in self._detaching:
            self._detaching.discard(green_thread)
            gevent.pool.Group._discard(self, green_thread)  # the slot stays taken
        else:
            super()._discard(green_thread)

    def detach(self) -> Callable[[], None]:
        """Keep the calling connection's slot past its green thread; the
        callable returned gives it back (once)."""
        self._detaching.add(greenlet.getcurrent())
        self.detached += 1
        return once(self._give_back)

    def _give_back(self) -> None:
        self.detached -= 1
        self._semaphore.release()


class NodeWSGIServer(gevent.pywsgi.WSGIServer):  # type: ignore[misc]  # gevent is untyped
    """pywsgi's server, which leaves the sockets of detached websockets open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.detached_sockets: set[Any] = set()

    def do_close(self, sock: Any, *args: Any) -> None:
        if sock in self.detached_sockets:
            self.detached_sockets.discard(sock)
            return
        super().do_close(sock, *args)


def handler_class(options: ServerOptions) -> type:
    """pywsgi's ``WSGIHandler`` with the node's timeouts, small buffers and
    the upgrade hand-off."""
    header_timeout = options.header_timeout or None
    idle_timeout = options.idle_timeout or None
    body_timeout = options.body_timeout or None
    log_output = options.log_output

    class NodeWSGIHandler(gevent.pywsgi.WSGIHandler):  # type: ignore[misc]  # gevent is untyped
        _head_timer: Any = None
        _requests = 0
        _socket_taken = False
        _detached = False
        wsgi_input: Any  # pywsgi's, set per request
        socket: Any  # pywsgi's; None once the handler gave the connection up

        def __init__(self, sock: Any, address: Any, server: Any) -> None:
            if idle_timeout:
                sock.settimeout(idle_timeout)
            super().__init__(sock, address, server, rfile=sock.makefile("rb", READ_BUFFER))

        def handle_one_request(self) -> Any:
            # gevent's timers (and socket timeouts) count from the loop's
            # cached time, as old as this turn of the loop: refresh it so the
            # waits below start now, as eventlet's do
            gevent.get_hub().loop.update_now()
            if self._requests and not self._next_request_arrives():
                return None  # closes the connection
            self._requests += 1
            timer = self._head_timer = (
                gevent.Timeout.start_new(header_timeout) if header_timeout else None)
            try:
                return super().handle_one_request()
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                # debug only: a flood of these must not flood the log
                logger.debug("closed %s: no complete request head within %.1f s",
                             self.client_address, header_timeout)
                return None
            finally:
                if timer is not None:
                    timer.close()
                self._head_timer = None

        def get_environ(self) -> dict[str, Any]:
            # the head is complete: the request now belongs to the application
            if self._head_timer is not None:
                self._head_timer.close()
                self._head_timer = None
            environ: dict[str, Any] = super().get_environ()
            if environ.get("HTTP_UPGRADE"):
                environ[UPGRADE_SOCKET] = self._take_socket
                if options.detach_websockets:
                    environ[UPGRADE_DETACH] = self._detach
            elif body_timeout:
                original = self.wsgi_input
                self.wsgi_input = environ["wsgi.input"] = DeadlineInput(
                    original.rfile, original.content_length, socket=original.socket,
                    chunked_input=original.chunked_input, budget=body_timeout,
                    on_expired=self._body_expired)
            return environ

        def _take_socket(self) -> Any:
            self._socket_taken = True
            return self.socket

        def _detach(self) -> Callable[[], None]:
            sock = self.socket
            self._detached = True
            server = self.server
            detached_sockets = getattr(server, "detached_sockets", None)
            if detached_sockets is not None:
                detached_sockets.add(sock)
            pool = server.pool
            release_slot = pool.detach() if isinstance(pool, ConnectionSlots) else (lambda: None)

            def release() -> None:
                if detached_sockets is not None:
                    detached_sockets.discard(sock)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already down
                sock.close()
                release_slot()

            return once(release)

        def handle_one_response(self) -> None:
            super().handle_one_response()
            if self._socket_taken:
                # the application spoke its own protocol on the socket and
                # is done with it: nothing more is read or written there
                self.close_connection = True
            if self._detached:
                # pywsgi closes (after reading from) the socket it still
                # holds once the handler ends: the websocket owns it now
                self.socket = None
                detached_environ(self.environ)  # what python-socketio keeps of it

        def _body_expired(self) -> None:
            self.close_connection = True

        def handle_error(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if not isinstance(exc, BodyDeadlineExceeded):
                super().handle_error(exc_type, exc, tb)
                return
            self.close_connection = True
            if not self.headers_sent and not self.response_length:
                try:
                    self.socket.sendall(TIMEOUT_RESPONSE)
                except OSError:
                    pass  # the client is gone: nothing to tell it
            # debug only, like the head deadline: the client chose to be slow
            logger.debug("closed %s: request body not received within %.1f s",
                         self.client_address, body_timeout)

        def log_request(self) -> None:
            if log_output:  # else not even the line is formatted
                super().log_request()

        def _next_request_arrives(self) -> bool:
            """Wait (up to the idle timeout) for the next request's first byte."""
            if self.rfile.closed:
                return False
            if not idle_timeout:
                return True
            try:
                # the socket's own timeout (the idle timeout) bounds the wait
                return bool(self.rfile.peek(1))  # b"": the client closed
            except OSError:  # reset by the peer, or the timeout
                return False

    return NodeWSGIHandler


class DeadlineInput(ChargedReads, gevent.pywsgi.Input):  # type: ignore[misc]  # gevent is untyped
    """pywsgi's request input whose reads share ``budget`` seconds (see
    :mod:`cluster.runner.body_deadline`).

    ``on_expired`` runs once, before :class:`BodyDeadlineExceeded` is
    raised, so that the handler closes the connection; the input then
    refuses pywsgi's discard of the rest of the body, which would wait for
    it slowly.
    """

    __slots__ = ("body_budget", "on_expired")

    def __init__(self, rfile: Any, content_length: Any, *, socket: Any, chunked_input: bool,
                 budget: float, on_expired: Callable[[], None]) -> None:
        super().__init__(rfile, content_length, socket=socket, chunked_input=chunked_input)
        self.on_expired = on_expired
        self.body_budget = BodyBudget(budget, self._expired, start_timer=gevent.Timeout.start_new,
                                      stop_timer=gevent.Timeout.close)

    def _expired(self) -> None:
        # pywsgi's flag for "the stream is in an unknown state": its discard
        # of the unread body then returns at once
        self._chunked_input_error = True  # a slot of pywsgi's Input
        self.on_expired()


class GeventServer:
    """``gevent.pywsgi.WSGIServer`` accepting in the hub."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def stop(self) -> None:
        # connections still open by now are cut (the drain closed the clients)
        self.server.stop(timeout=1.0)


def serve(wsgi_app: Callable[..., Any], host: str, port: int,
          options: ServerOptions) -> GeventServer:
    """Listen on ``host:port`` now and serve ``wsgi_app`` until stopped."""
    sock = listen(host, port, tcp_nodelay=options.tcp_nodelay, backlog=options.backlog)
    access_log: Any = (gevent.pywsgi.LoggingLogAdapter(logging.getLogger("cluster.access"))
                       if options.log_output else None)
    server = NodeWSGIServer(
        sock, wsgi_app, spawn=ConnectionSlots(options.max_connections),
        handler_class=handler_class(options), log=access_log,
        # pywsgi's own lines are about what clients sent (a bad request line):
        # debug only, so that strangers cannot flood the log
        error_log=gevent.pywsgi.LoggingLogAdapter(logger, logging.DEBUG))
    server.start()
    return GeventServer(server)
