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
  told the response was written (as its own websocket module does);
- detached websockets (:data:`cluster.runtime.UPGRADE_DETACH`): the
  connection's green thread ends while its socket stays open. eventlet
  shuts a connection down in two places once its green thread ends (the
  protocol's ``finish`` and the server's link on the green thread), so the
  protocol skips the first and hands the second a stand-in; and the
  connection keeps its slot of ``max_connections`` (:class:`ConnectionSlots`,
  the server's pool) until the websocket closes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import eventlet
import eventlet.semaphore
import eventlet.wsgi
import greenlet
from eventlet import greenio

from cluster.runner.body_deadline import TIMEOUT_RESPONSE, BodyDeadlineExceeded
from cluster.runtime import (
    UPGRADE_DETACH,
    UPGRADE_SOCKET,
    ServerOptions,
    detached_environ,
    once,
)
from cluster.runtime.body_reader import BodyBudget, ChargedReads

__all__ = ["ConnectionSlots", "EventletServer", "deadline_input", "http_protocol", "listen",
           "serve"]

logger = logging.getLogger("cluster.node")


def listen(host: str, port: int, *, tcp_nodelay: bool = True, backlog: int = 2048) -> Any:
    """An eventlet listening socket with the node's socket options."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # not SO_REUSEPORT, which eventlet.listen sets by default on a given
    # port: with it a second node started on a port already served binds
    # too, and the kernel splits the connections between the two processes
    # without a word (seen in the test suite: two nodes given one port, a
    # client "of" one node connected to the other). Without it the second
    # bind fails with EADDRINUSE, which the runner reports; gevent's
    # listener never set it.
    sock = eventlet.listen((host, port), family=family, backlog=backlog, reuse_addr=True,
                           reuse_port=False)
    if tcp_nodelay:
        # accepted sockets inherit TCP_NODELAY from the listener on Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class ConnectionSlots:
    """The server's pool: at most ``size`` connections, detached websockets
    included (eventlet's ``GreenPool`` counts green threads, and a detached
    websocket has none).

    The accept loop waits in :meth:`spawn` while every slot is taken, so
    new connections wait in the listener's accept queue, as with
    eventlet's own pool. A connection's green thread gives its slot back
    when it ends, unless it detached (:meth:`detach`): then whoever holds
    the detached connection gives it back, once, through the callable
    :meth:`detach` returned.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = eventlet.semaphore.Semaphore(size)
        self._running: set[Any] = set()
        self._detaching: set[Any] = set()
        self.detached = 0

    def spawn(self, function: Callable[..., Any], *args: Any) -> Any:
        self._free.acquire()
        green_thread = eventlet.spawn(self._run, function, args)
        self._running.add(green_thread)
        return green_thread

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        current = greenlet.getcurrent()
        try:
            return function(*args)
        finally:
            self._running.discard(current)
            if current in self._detaching:
                self._detaching.discard(current)
            else:
                self._free.release()

    def detach(self) -> Callable[[], None]:
        """Keep the calling connection's slot past its green thread; the
        callable returned gives it back (once)."""
        self._detaching.add(greenlet.getcurrent())
        self.detached += 1
        return once(self._give_back)

    def _give_back(self) -> None:
        self.detached -= 1
        self._free.release()

    def waitall(self) -> None:
        """Wait for the connections' green threads (at the server's stop)."""
        for green_thread in list(self._running):
            try:
                green_thread.wait()
            except Exception:  # noqa: BLE001, S110 - its own failure, reported when it ended
                pass


class _DetachedSocket:
    """What eventlet's server is left to shut down when a detached
    connection's green thread ends: nothing (the websocket owns the socket)."""

    def shutdown(self, *_args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def http_protocol(header_timeout: float | None = None, idle_timeout: float | None = None,
                  body_timeout: float | None = None,
                  slots: ConnectionSlots | None = None, detach: bool = False) -> Any:
    """eventlet's ``HttpProtocol`` with small buffers, the node's request
    timeouts (``None`` switches one off) and the upgrade hand-off
    (``slots``: the server's pool, which a detached websocket keeps a slot
    of; without it a detached websocket holds none)."""

    class NodeHttpProtocol(eventlet.wsgi.HttpProtocol):  # type: ignore[misc]  # eventlet is untyped
        rbufsize = 2048
        wbufsize = 2048
        _head_timer: Any = None
        _requests = 0
        _detached = False

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
                if detach:
                    environ[UPGRADE_DETACH] = self._detach
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

        def _detach(self) -> Callable[[], None]:
            sock = self.connection
            self._detached = True
            self.close_connection = 1
            # the server's link shuts down what conn_state holds
            self.conn_state[1] = _DetachedSocket()
            release_slot = slots.detach() if slots is not None else (lambda: None)

            def release() -> None:
                greenio.shutdown_safe(sock)
                sock.close()
                release_slot()

            return once(release)

        def finish(self) -> None:
            if not self._detached:
                super().finish()
                return
            # the buffers go, the socket stays: the websocket owns it now
            environ = getattr(self, "environ", None)
            if environ is not None:  # what python-socketio keeps of the request
                detached_environ(environ, ("eventlet.input", "eventlet.set_idle",
                                           "eventlet.posthooks"))
            for stream in (self.wfile, self.rfile):
                try:
                    stream.close()
                except OSError:
                    pass

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
    pool = ConnectionSlots(options.max_connections)
    green_thread = eventlet.spawn(
        eventlet.wsgi.server, sock, wsgi_app, custom_pool=pool,
        log_output=options.log_output, log=logging.getLogger("cluster.access"),
        # per socket operation, restarted by every byte: bounds a stalled
        # body or response; websockets replace it with their ping timeout
        socket_timeout=options.idle_timeout or None, debug=False,
        protocol=http_protocol(options.header_timeout, options.idle_timeout,
                               options.body_timeout, pool, options.detach_websockets),
    )
    return EventletServer(green_thread, sock)
