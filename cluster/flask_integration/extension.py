"""The Flask extension: Flask-SocketIO's ``SocketIO`` surface on a cluster.

An application written for Flask-SocketIO ports by changing its import::

    from cluster import SocketIO, emit, join_room

Everything here keeps Flask-SocketIO's names, arguments and defaults. What the
cluster adds (the bus, persisted sessions, recovery, health) comes in through
extra keyword arguments and never changes what the familiar ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flask
import socketio

from cluster.bus.features import BusFeatures, bus_features
from cluster.bus.services.answering import gather_on
from cluster.bus.services.asks import GatherResult
from cluster.config import NodeConfig
from cluster.exceptions import ConfigurationError
from cluster.flask_integration.cluster_registrations import (
    ClusterRegistrations,
    cluster_view,
    presence_of,
)
from cluster.flask_integration.emitting import Emitter
from cluster.flask_integration.handler_context import HandlerRunner
from cluster.flask_integration.registration import HandlerRegistry
from cluster.flask_integration.tasks import TasksAndServing
from cluster.flask_integration.wsgi_stack import wrap_wsgi_app
from cluster.node.server import ClusterServer
from cluster.node.server_setup import build_manager, create_connection_sessions, create_server
from cluster.runner.health import NodeState

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["SocketIO"]

class SocketIO:
    """Create a Socket.IO server for a Flask application, ready to cluster.

    :param app: the Flask application, or ``None`` to call ``init_app`` later
        (application factories).
    :param manage_session: ``True`` (default) gives handlers a *forked* copy of
        the HTTP session taken at connect: handlers see each other's changes,
        HTTP routes never do. ``False`` uses the application's session
        interface directly on every event, for server-side sessions
        (Flask-Session), so HTTP changes are visible to handlers.
    :param message_queue: the bus URL that joins this node to the cluster:
        ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or a
        kombu URL such as ``amqp://``. ``None`` (default) runs a single node.
        With a URL and no ``app``, the object is a write-only emitter usable
        from any process.
    :param channel: the bus channel; default ``"flask-socketio"``, the same as
        Flask-SocketIO so existing external emitters keep working.
    :param write_only: only emit to the bus, never listen (external
        processes). Default ``False`` unless ``app`` is ``None``.
    :param message_queue_options: options passed through to the bus driver
        (redis-py or kombu), e.g. ``{"password": ..., "ssl_cert_reqs": ...}``.
    :param signing_secret: shared secret; when set, every bus message is
        signed and unsigned or wrongly signed messages are dropped. Default
        ``None`` (no signing).
    :param connection_state_recovery: ``{"max_disconnection_duration": 120,
        "skip_connect_handler": False}`` turns Socket.IO's connection state
        recovery on (needs a Redis bus); ``None`` (default) leaves it off.
    :param session_store: where forked sessions persist so a reconnect to any
        node resumes them: default Redis when ``message_queue`` is a Redis
        URL, else only in the connection; ``"memory"`` or a
        ``session_store.SessionStore`` otherwise.
    :param session_ttl: seconds a session stays resumable after its
        connection ends (default 120, or the recovery window).
    :param resume_identity: ``f(auth) -> str | None``, the identity a resume
        id is bound to; default Flask-Login's user id from the HTTP session.
    :param max_events_per_second: per-connection rate limit of incoming
        packets. Default 100 a second with bursts of 200: far above what a
        person types, far below a flood. Every packet type counts: an event,
        ACK or DISCONNECT costs one, a CONNECT five; ACKs for ids the server
        never issued are dropped (``unknown_acks``). Excess events are
        dropped and counted (``rate_limited_events``), logged at most once per
        connection every 10 s; a client sending 10x the rate for 3 s is
        disconnected (``flood_disconnects``). ``None`` or ``0`` switches the
        limit off.
    :param max_rooms_per_connection: rooms one connection may be in per
        namespace, its own room not counted (default 1,000). ``join_room``
        past it raises :class:`cluster.exceptions.RoomLimitExceeded` in the
        handler that called it.
    :param max_namespaces_per_connection: namespaces one connection may be
        connected to at once (default 10). A CONNECT past it is answered
        with a CONNECT_ERROR and counted (``namespace_limit_refusals``);
        the connection keeps the namespaces it is in.
    :param connect_timeout: seconds an Engine.IO connection has to complete
        a Socket.IO CONNECT before it is closed (default 45, as socket.io);
        a connection whose CONNECT was refused is closed a second after the
        CONNECT_ERROR, one that left its last namespace gets the timeout
        again.
    :param max_replay_packets: connection state recovery replays at most
        this many missed packets (default 2,000); a client that missed more
        gets a plain resume (session and rooms, no replay), logged and
        counted (``recovery_over_limit``).
    :param max_replay_bytes: the same bound in bytes (default 512 KiB; keep
        it below ``max_backlog``, or a replay to a slow client is cut).
    :param max_concurrent_connects: CONNECTs a node works on at once
        (default 32); the others wait their turn, and one that waits past
        ``connect_timeout`` has its connection closed so the client comes
        back later (a reconnect storm must not starve the connected clients
        nor exhaust the session store's connections). Raise it when the
        connect handler waits on slow services.
    :param websocket_compression: accept permessage-deflate when a client
        offers it. Default ``False``: browsers always offer it, and it costs
        2.5-3x CPU and memory per delivery.
    :param tcp_nodelay: set ``TCP_NODELAY`` on the listening socket (default
        ``True``: without it back-to-back frames wait on Nagle's algorithm).
    :param max_backlog: bytes a client may leave unread (frames the node
        could not hand to its socket yet) before it is disconnected, logged
        and counted as ``slow_consumers``. Default 1 MiB: a stalled or
        hostile reader cannot grow the node's memory beyond that.
    :param write_window: seconds a frame may wait to leave with the next
        ones on a websocket the node streams to: one written to less than
        that ago whose client has sent nothing since (default 0.001; ``0``
        switches it off, 0.1 at most). Fewer, fuller TCP segments for
        clients that receive many events a second, for at most that much
        latency; an answer to what a client sent never waits.
    :param http_header_timeout: seconds a client has to send a complete HTTP
        request head (default 10); ``0`` or ``None`` switches it off.
    :param http_idle_timeout: seconds a kept-alive HTTP connection, a
        request body or a response may stay silent (default 60); upgraded
        websockets use their ping timeout instead.
    :param http_body_timeout: seconds in all a request may spend waiting
        for its body (default 30: a polling POST is a few hundred bytes);
        past it the node answers 408 and closes. ``0`` or ``None``
        switches it off.
    :param max_connections: concurrent connections one node serves under
        eventlet. Default 100,000 (eventlet's own default is 1,024, after which
        new connections silently hang).

    Any other keyword argument goes to :class:`socketio.Server` (and to
    python-engineio): ``cors_allowed_origins``, ``ping_interval``,
    ``ping_timeout``, ``max_http_buffer_size``, ``async_handlers`` (default
    ``True``), ``always_connect``, ``logger``, ``engineio_logger``, ``json``,
    ``path``, ``async_mode`` (default: ``eventlet`` or ``gevent`` when that
    library has monkey-patched the process, as the node runner does, else
    ``threading``; ``None`` means the same default), ``namespaces``, ``serializer``.
    ``client_manager`` replaces the bus manager built from ``message_queue``
    (after ``init_app`` it holds the manager in use, as in Flask-SocketIO).

    Attributes Flask-SocketIO applications read: ``async_mode`` (after
    ``init_app``), ``reason`` (the disconnect reasons, ``SocketIO.reason.
    CLIENT_DISCONNECT`` and the like), ``server``, ``server_options`` (the
    keyword arguments as given), ``manage_session``, ``wsgi_server``. The
    validated configuration is ``config`` (:class:`cluster.config.NodeConfig`,
    also ``server.config``), built once by ``init_app``.
    """

    #: why a client disconnected (the ``reason`` of disconnect handlers)
    reason = socketio.Server.reason

    def __init__(self, app: flask.Flask | None = None, **kwargs: Any) -> None:
        self.app: flask.Flask | None = None
        self.server: ClusterServer = None  # type: ignore[assignment]
        #: the keyword arguments as given (Flask-SocketIO's attribute); the
        #: node reads ``config``, built from them by init_app
        self.server_options: dict[str, Any] = {}
        self.config: NodeConfig | None = None
        self.manage_session = True
        self.sessions: Any = None
        self.runner = HandlerRunner(self)
        self._registry = HandlerRegistry(lambda: self.server, self.runner, self)
        self.cluster_registrations = ClusterRegistrations(
            lambda: self._features() if self.server is not None else None)
        self.node_state = NodeState(self._features)
        self._emitter = Emitter(lambda: self.server, self.runner)
        self._tasks = TasksAndServing(lambda: self.server, lambda: self.app, self.node_state, self)
        self.wsgi_server: Any = None
        #: the async mode in use ("eventlet", "gevent" or "threading"); set by init_app
        self.async_mode: str | None = None
        self._built_manager: Any = None
        if app is not None or "message_queue" in kwargs:
            self.init_app(app, **kwargs)
        else:
            self.server_options.update(kwargs)

    # -- setup -------------------------------------------------------------

    def init_app(self, app: flask.Flask | None, **kwargs: Any) -> None:
        """Attach to ``app`` (see the class docstring for the options)."""
        options = dict(self.server_options)
        if "client_manager" not in kwargs and options.get("client_manager") is not None \
                and options["client_manager"] is self._built_manager:
            # the manager an earlier init_app built: build one for these options
            options.pop("client_manager")
        options.update(kwargs)
        self.server_options = options
        # validated before the app is touched: a mistake leaves it as it was
        config = NodeConfig.from_options(options, has_app=app is not None)
        if app is not None:
            if not hasattr(app, "extensions"):
                app.extensions = {}  # pragma: no cover - very old Flask
            app.extensions["socketio"] = self
            self.app = app
        self.config = config
        self.manage_session = config.sessions.manage_session
        parts = create_server(config, self)
        self.server, self.sessions = parts.server, parts.sessions
        self.async_mode = self.server.async_mode
        self._remember_manager()
        self._registry.register_on(self.server)
        self.cluster_registrations.apply(self._features())
        if app is not None:
            wrap_wsgi_app(app, self)

    def reconfigure(self, config: NodeConfig) -> None:
        """Apply a new configuration (the node runner's flags) before the
        first client connects: limits and transport settings at once, and
        a new bus manager and session binding when those settings changed.
        """
        old, server = self.config, self.server
        if old is None or server is None:
            raise ConfigurationError("reconfigure() needs an initialised SocketIO: call "
                                     "init_app(app) first.")
        if config.bus.write_only != old.bus.write_only:
            raise ConfigurationError("write_only cannot change after init_app().")
        bus_changed = config.bus != old.bus or config.bus.client_manager is not \
            old.bus.client_manager or config.recovery != old.recovery
        if bus_changed:
            # checked first: it refuses once clients are served
            server.replace_manager(
                build_manager(config.bus, config.recovery, write_only=config.bus.write_only))
        self.config = server.config = config
        self.manage_session = config.sessions.manage_session
        server.recovery = config.recovery
        server.set_limits(config.limits)
        server.eio.set_max_backlog(config.transport.max_backlog)
        server.eio.set_write_window(config.transport.write_window)
        if bus_changed:
            self._remember_manager()
            self.cluster_registrations.apply(self._features())
        if bus_changed or config.sessions != old.sessions or config.redis_url != old.redis_url:
            self.sessions = create_connection_sessions(self, config, server)

    def use_message_queue(self, url: str | None, **kwargs: Any) -> None:
        """Join (or leave, with ``None``) a bus before the first client connects;
        ``kwargs``: ``channel``, ``signing_secret``, ``node_name``,
        ``message_queue_options``."""
        if self.config is None:
            raise ConfigurationError("use_message_queue() needs init_app(app) first.")
        if url is None:
            self.reconfigure(self.config.without("message_queue").with_overrides(**kwargs))
        else:
            self.reconfigure(self.config.with_overrides(message_queue=url, **kwargs))

    def _remember_manager(self) -> None:
        # Flask-SocketIO exposes the manager in use as
        # server_options["client_manager"]; an explicit one stays the user's
        self._built_manager = self.server.manager
        self.server_options["client_manager"] = self.server.manager

    def _features(self) -> BusFeatures:
        return bus_features(self.server.manager if self.server is not None else None)

    # -- handlers (cluster.flask_integration.registration) -----------------

    def on(self, message: str, namespace: str | None = None) -> Callable[[F], F]:
        """Decorator registering a handler for ``message`` on ``namespace``."""
        return self._registry.on(message, namespace)

    def on_event(self, message: str, handler: Callable[..., Any],
                 namespace: str | None = None) -> None:
        """Register ``handler`` for ``message`` without a decorator. Catch-alls as
        in Flask-SocketIO: a ``"*"`` handler gets ``(event, *data)`` of events
        without a handler; one on ``namespace="*"`` serves every namespace."""
        self._registry.on_event(message, handler, namespace)

    def event(self, *args: Any, **kwargs: Any) -> Any:
        """``@socketio.event`` or ``@socketio.event(namespace="/chat")``: a
        handler named after the decorated function."""
        return self._registry.event(*args, **kwargs)

    def on_namespace(self, namespace_handler: Any) -> None:
        """Register a class-based :class:`cluster.Namespace` instance."""
        self._registry.on_namespace(namespace_handler)

    def on_error(self, namespace: str | None = None) -> Callable[[F], F]:
        """Decorator registering the error handler of ``namespace``: it gets
        the exception, its return value is the ack."""
        return self._registry.on_error(namespace)

    def on_error_default(self, exception_handler: F) -> F:
        """Decorator registering the error handler of every namespace."""
        return self._registry.on_error_default(exception_handler)

    # Flask-SocketIO's attributes, kept by the registry
    @property
    def handlers(self) -> list[tuple[str, Callable[..., Any], str]]:
        return self._registry.handlers

    @handlers.setter
    def handlers(self, value: list[tuple[str, Callable[..., Any], str]]) -> None:
        self._registry.handlers = value

    @property
    def namespace_handlers(self) -> list[Any]:
        return self._registry.namespace_handlers

    @namespace_handlers.setter
    def namespace_handlers(self, value: list[Any]) -> None:
        self._registry.namespace_handlers = value

    @property
    def exception_handlers(self) -> dict[str, Callable[[Exception], Any]]:
        return self._registry.exception_handlers

    @exception_handlers.setter
    def exception_handlers(self, value: dict[str, Callable[[Exception], Any]]) -> None:
        self._registry.exception_handlers = value

    @property
    def default_exception_handler(self) -> Callable[[Exception], Any] | None:
        return self._registry.default_exception_handler

    @default_exception_handler.setter
    def default_exception_handler(self, value: Callable[[Exception], Any] | None) -> None:
        self._registry.default_exception_handler = value

    # -- tasks and serving (cluster.flask_integration.tasks) ---------------

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start ``target`` in the async mode's thread kind; ``.join()`` waits.
        It runs on every node that calls this (see :meth:`start_singleton_task`)."""
        return self._tasks.start_background_task(target, *args, **kwargs)

    def start_singleton_task(self, name: str, target: Callable[..., Any], *args: Any,
                             lease_seconds: float = 5.0, redis_url: str | None = None,
                             **kwargs: Any) -> Any:
        """Run ``target(*args, **kwargs)`` on exactly one node of the cluster: the
        holder of its Redis lease (``redis_url``, default the message queue),
        replaced ``lease_seconds`` after it dies. Returns a
        :class:`cluster.flask_integration.singleton_tasks.SingletonTask`."""
        return self._tasks.start_singleton_task(name, target, *args, lease_seconds=lease_seconds,
                                                redis_url=redis_url, **kwargs)

    def sleep(self, seconds: float = 0) -> None:
        """Sleep without blocking other clients; in a singleton task that lost
        its lease it raises :class:`cluster.exceptions.LeaseLost`."""
        self._tasks.sleep(seconds)

    def run(self, app: flask.Flask | None = None, host: str | None = None,
            port: int | None = None, **kwargs: Any) -> None:
        """Serve the app: under eventlet or gevent with the node's server, else with
        Werkzeug's (``allow_unsafe_werkzeug=True`` outside debug, as in Flask-SocketIO)."""
        self._tasks.run(app, host=host, port=port, **kwargs)

    def drain(self, grace_seconds: float = 10.0) -> None:
        """Report not-ready, let handlers finish (up to ``grace_seconds``), then
        send every local client to resume on another node. SIGTERM does this."""
        self._tasks.drain(grace_seconds)

    def stop(self) -> None:
        """Stop a server started with :meth:`run`."""
        self._tasks.stop()

    def test_client(self, app: flask.Flask, namespace: str | None = None,
                    query_string: str | None = None, headers: dict[str, str] | None = None,
                    auth: dict[str, Any] | None = None, flask_test_client: Any = None) -> Any:
        """A client that talks to this server in-process, for unit tests."""
        return self._tasks.test_client(app, namespace, query_string, headers, auth,
                                       flask_test_client)

    # -- cluster-wide (cluster.flask_integration.cluster_registrations) ----

    @property
    def cluster(self) -> Any:
        """Cluster-wide queries and commands (:class:`cluster.bus.ClusterView`):
        ``room_members``, ``room_size``, ``rooms_of``, ``sockets``,
        ``sockets_join``, ``sockets_leave``, ``disconnect_sockets``,
        ``server_side_emit``/``server_side_call`` and ``on``, ``live_nodes``.
        Needs a message queue."""
        return cluster_view(self._features())

    @property
    def presence(self) -> Any:
        """First-join / last-leave room events across the cluster:
        ``socketio.presence.on(callback(event, room, namespace))``."""
        return presence_of(self._features())

    def on_cluster_event(self, event: str, namespace: str = "/") -> Callable[[F], F]:
        """Decorator: handle ``server_side_emit(event)`` from other nodes.

        Unlike ``socketio.cluster.on``, it may be used at import time, before
        the node runner joins the app to the bus. The return value is the ack.
        """
        return self.cluster_registrations.on(event, namespace)

    def on_presence(self, callback: F) -> F:
        """Decorator: ``callback(event, room, namespace)`` when a room gets its
        first member (``"first_join"``) or loses its last (``"last_leave"``)
        anywhere in the cluster. Usable at import time."""
        self.cluster_registrations.add_presence_callback(callback)
        return callback

    # -- emitting ----------------------------------------------------------

    def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Emit ``event`` to a sid, a room, a list of rooms or everyone.

        Keywords as in Flask-SocketIO: ``namespace`` (default ``"/"``),
        ``to``/``room`` (default: everyone), ``include_self`` (default
        ``True``), ``skip_sid``, ``callback`` (an ack; needs ``to``).
        """
        self._emitter.emit(event, *args, **kwargs)

    def call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Emit to one client and wait for its ack (``to=``, ``timeout=60``)."""
        return self._emitter.call(event, *args, **kwargs)

    def gather(self, event: str, *args: Any, to: Any, namespace: str | None = None,
               timeout: float = 5, skip_sid: Any = None) -> GatherResult:
        """Send ``event`` to every client in ``to`` (a room, a sid or a list
        of them) on every node and wait for their acks, at most ``timeout``
        seconds (default 5; at most 600): socket.io's
        ``io.to(room).timeout(ms).emitWithAck()``, across the cluster.

        Returns a :class:`~cluster.bus.services.asks.GatherResult`:
        ``answers`` maps each answering client's sid to its answer (shaped
        as :meth:`call` returns it), ``missing`` names the clients that got
        the event and did not answer in time, those of a node that died
        meanwhile included. It returns as soon as every client answered;
        never after the deadline. Without a message queue it asks this
        node's clients.
        """
        return gather_on(self.server, event, list(args), to=to,
                         namespace=namespace or "/", timeout=timeout, skip_sid=skip_sid)

    def send(self, data: Any, json: bool = False, namespace: str | None = None,
             to: str | None = None, callback: Callable[..., Any] | None = None,
             include_self: bool = True, skip_sid: str | list[str] | None = None,
             **kwargs: Any) -> None:
        """Send a ``message`` (or ``json`` with ``json=True``) event."""
        to = to or kwargs.pop("room", None)
        self.emit(
            "json" if json else "message", data, namespace=namespace, to=to,
            include_self=include_self, skip_sid=skip_sid, callback=callback, **kwargs,
        )

    def close_room(self, room: str, namespace: str | None = None) -> None:
        """Remove every client from ``room``, on every node."""
        self.server.close_room(room, namespace or "/")
