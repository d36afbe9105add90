"""The Flask extension: Flask-SocketIO's ``SocketIO`` surface on a cluster.

An application written for Flask-SocketIO ports by changing its import::

    from cluster import SocketIO, emit, join_room

Everything here keeps Flask-SocketIO's names, arguments and defaults. What the
cluster adds (the bus, persisted sessions, recovery, health) comes in through
extra keyword arguments and never changes what the familiar ones do.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

import flask
import socketio

from cluster.exceptions import ConfigurationError
from cluster.flask_integration.handler_context import HandlerRunner
from cluster.runner.health import HealthMiddleware, NodeState
from cluster.runner.serve import DeclineCompressionMiddleware
from cluster.node.server import ClusterServer
from cluster.node.server_setup import create_server
from cluster.flask_integration.singleton_tasks import check_lease

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("cluster")

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
        events. Default 100 a second with bursts of 200: far above what a
        person types, far below a flood. Excess events are dropped and
        counted (``rate_limited_events``), logged at most once per
        connection every 10 s; a client sending 10x the rate for 3 s is
        disconnected (``flood_disconnects``). ``None`` or ``0`` switches the
        limit off.
    :param max_rooms_per_connection: rooms one connection may be in per
        namespace, its own room not counted (default 1,000). ``join_room``
        past it raises :class:`cluster.exceptions.RoomLimitExceeded` in the
        handler that called it.
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
    :param websocket_compression: accept permessage-deflate when a client
        offers it. Default ``False``: browsers always offer it, and it costs
        2.5-3x CPU and memory per delivery.
    :param tcp_nodelay: set ``TCP_NODELAY`` on the listening socket (default
        ``True``: without it back-to-back frames wait on Nagle's algorithm).
    :param max_backlog: bytes a client may leave unread (frames the node
        could not hand to its socket yet) before it is disconnected, logged
        and counted as ``slow_consumers``. Default 1 MiB: a stalled or
        hostile reader cannot grow the node's memory beyond that.
    :param http_header_timeout: seconds a client has to send a complete HTTP
        request head (default 10); ``0`` or ``None`` switches it off.
    :param http_idle_timeout: seconds a kept-alive HTTP connection, a
        request body or a response may stay silent (default 60); upgraded
        websockets use their ping timeout instead.
    :param max_connections: concurrent connections one node serves under
        eventlet. Default 100,000 (eventlet's own default is 1,024, after which
        new connections silently hang).

    Any other keyword argument goes to :class:`socketio.Server` (and to
    python-engineio): ``cors_allowed_origins``, ``ping_interval``,
    ``ping_timeout``, ``max_http_buffer_size``, ``async_handlers`` (default
    ``True``), ``always_connect``, ``logger``, ``engineio_logger``, ``json``,
    ``path``, ``async_mode`` (default: ``eventlet`` when eventlet has
    monkey-patched the process, as the node runner does, else ``threading``;
    ``None`` means the same default), ``namespaces``, ``serializer``.
    ``client_manager`` replaces the bus manager built from ``message_queue``
    (after ``init_app`` it holds the manager in use, as in Flask-SocketIO).

    Attributes Flask-SocketIO applications read: ``async_mode`` (after
    ``init_app``), ``reason`` (the disconnect reasons, ``SocketIO.reason.
    CLIENT_DISCONNECT`` and the like), ``server``, ``server_options``,
    ``manage_session``, ``wsgi_server``.
    """

    #: why a client disconnected (the ``reason`` of disconnect handlers)
    reason = socketio.Server.reason

    def __init__(self, app: flask.Flask | None = None, **kwargs: Any) -> None:
        self.app: flask.Flask | None = None
        self.server: ClusterServer = None  # type: ignore[assignment]
        self.server_options: dict[str, Any] = {}
        self.manage_session = True
        self.sessions: Any = None
        self.handlers: list[tuple[str, Callable[..., Any], str]] = []
        self.namespace_handlers: list[Any] = []
        self.exception_handlers: dict[str, Callable[[Exception], Any]] = {}
        self.default_exception_handler: Callable[[Exception], Any] | None = None
        self.runner = HandlerRunner(self)
        self.cluster_handlers: list[tuple[str, Callable[..., Any], str]] = []
        self.presence_callbacks: list[Callable[..., Any]] = []
        self.node_state = NodeState(self)
        self.wsgi_server: Any = None
        #: the async mode in use ("eventlet" or "threading"); set by init_app
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
        if app is not None:
            if not hasattr(app, "extensions"):
                app.extensions = {}  # pragma: no cover - very old Flask
            app.extensions["socketio"] = self
            self.app = app
        self.manage_session = options.get("manage_session", True)
        self.server = create_server(self, app, options)
        self.async_mode = self.server.async_mode
        self._remember_manager()
        for event, handler, namespace in self.handlers:
            self.server.on(event, handler, namespace=namespace)
        for namespace_handler in self.namespace_handlers:
            self.server.register_namespace(namespace_handler)
        if app is not None and not getattr(app, "_cluster_socketio_wrapped", False):
            # Socket.IO is served under its path ahead of the Flask routes, and
            # the probes ahead of both
            wsgi_app: Any = socketio.WSGIApp(
                self.server, app.wsgi_app, socketio_path=self.server.socketio_path
            )
            wsgi_app = DeclineCompressionMiddleware(wsgi_app, self.server_options)
            app.wsgi_app = HealthMiddleware(wsgi_app, self, self.node_state)  # type: ignore[method-assign]
            app._cluster_socketio_wrapped = True  # type: ignore[attr-defined]

    def use_message_queue(self, url: str | None, **kwargs: Any) -> None:
        """Join (or leave, with ``None``) a bus after the app was created.

        The node runner calls this with ``--message-queue`` so an application
        module need not know the deployment's URL. It must happen before the
        first client connects.
        """
        self.server.replace_manager(url, **kwargs)
        self._remember_manager()

    def _remember_manager(self) -> None:
        # Flask-SocketIO exposes the manager in use as
        # server_options["client_manager"]; an explicit one stays the user's
        self._built_manager = self.server.manager
        self.server_options["client_manager"] = self.server.manager

    @property
    def cluster(self) -> Any:
        """Cluster-wide queries and commands (:class:`cluster.bus.ClusterView`):
        ``room_members``, ``room_size``, ``rooms_of``, ``sockets``,
        ``sockets_join``, ``sockets_leave``, ``disconnect_sockets``,
        ``server_side_emit``/``server_side_call`` and ``on``, ``live_nodes``.
        Needs a message queue."""
        view = getattr(self.server.manager, "cluster", None)
        if view is None:
            raise ConfigurationError(
                "socketio.cluster needs a message queue: pass message_queue= to SocketIO() "
                "or --message-queue to the node runner.")
        return view

    @property
    def presence(self) -> Any:
        """First-join / last-leave room events across the cluster:
        ``socketio.presence.on(callback(event, room, namespace))``."""
        presence = getattr(self.server.manager, "presence", None)
        if presence is None:
            raise ConfigurationError("socketio.presence needs a message queue.")
        return presence

    def on_cluster_event(self, event: str, namespace: str = "/") -> Callable[[F], F]:
        """Decorator: handle ``server_side_emit(event)`` from other nodes.

        Unlike ``socketio.cluster.on``, it may be used at import time, before
        the node runner joins the app to the bus. The return value is the ack.
        """
        def decorator(handler: F) -> F:
            self.cluster_handlers.append((event, handler, namespace))
            self._apply_cluster_registrations()
            return handler

        return decorator

    def on_presence(self, callback: F) -> F:
        """Decorator: ``callback(event, room, namespace)`` when a room gets its
        first member (``"first_join"``) or loses its last (``"last_leave"``)
        anywhere in the cluster. Usable at import time."""
        self.presence_callbacks.append(callback)
        self._apply_cluster_registrations()
        return callback

    def _apply_cluster_registrations(self) -> None:
        manager = self.server.manager if self.server is not None else None
        view = getattr(manager, "cluster", None)
        if view is not None:
            for event, handler, namespace in self.cluster_handlers:
                view.on(event, handler, namespace=namespace)
        presence = getattr(manager, "presence", None)
        if presence is not None:
            for callback in self.presence_callbacks:
                if callback not in presence._callbacks:
                    presence.on(callback)

    # -- handler registration ----------------------------------------------

    def on(self, message: str, namespace: str | None = None) -> Callable[[F], F]:
        """Decorator registering a handler for ``message`` on ``namespace``."""
        namespace = namespace or "/"

        def decorator(handler: F) -> F:
            self.on_event(message, handler, namespace)
            return handler

        return decorator

    def on_event(
        self, message: str, handler: Callable[..., Any], namespace: str | None = None
    ) -> None:
        """Register ``handler`` for ``message`` without a decorator.

        Catch-alls work as in Flask-SocketIO: a ``"*"`` handler receives
        ``(event, *data)`` for every event that has no handler of its own,
        and a handler on ``namespace="*"`` handles ``message`` in every
        namespace, with ``request.namespace`` the real one. In both,
        ``request.sid`` is the client's sid and ``request.event["message"]``
        the name the handler was registered for (``"*"`` for a catch-all).
        """
        namespace = namespace or "/"
        runner = self.runner

        def run_in_flask_context(*args: Any) -> Any:
            # python-socketio puts what a catch-all caught before the sid:
            # (event, sid, ...), (namespace, sid, ...) or (event, namespace, sid, ...)
            real_namespace = namespace
            caught: tuple[Any, ...] = ()
            if message == "*":
                caught, args = (args[0],), args[1:]
            if namespace == "*":
                real_namespace, args = args[0], args[1:]
            return runner.run(handler, message, real_namespace, args[0], *caught, *args[1:])

        run_in_flask_context.__wrapped__ = handler  # type: ignore[attr-defined]
        if self.server is not None:
            self.server.on(message, run_in_flask_context, namespace=namespace)
        self.handlers.append((message, run_in_flask_context, namespace))

    def event(self, *args: Any, **kwargs: Any) -> Any:
        """Register a handler named after the decorated function.

        ``@socketio.event`` or ``@socketio.event(namespace="/chat")``.
        """
        if len(args) == 1 and not kwargs and callable(args[0]):
            handler = args[0]
            return self.on(handler.__name__)(handler)

        def decorator(handler: F) -> F:
            return self.on(handler.__name__, *args, **kwargs)(handler)

        return decorator

    def on_namespace(self, namespace_handler: Any) -> None:
        """Register a class-based :class:`cluster.Namespace` instance."""
        from cluster.flask_integration.namespace import Namespace

        if not isinstance(namespace_handler, Namespace):
            raise ConfigurationError(
                "on_namespace() takes a cluster.Namespace instance; derive your "
                "class from cluster.Namespace rather than socketio.Namespace."
            )
        namespace_handler._set_socketio(self)
        if self.server is not None:
            self.server.register_namespace(namespace_handler)
        self.namespace_handlers.append(namespace_handler)

    def on_error(self, namespace: str | None = None) -> Callable[[F], F]:
        """Decorator registering the error handler of ``namespace``.

        It receives the exception; its return value becomes the ack response.
        """
        namespace = namespace or "/"

        def decorator(exception_handler: F) -> F:
            if not callable(exception_handler):
                raise ConfigurationError("on_error() must decorate a function.")
            self.exception_handlers[namespace] = exception_handler
            return exception_handler

        return decorator

    def on_error_default(self, exception_handler: F) -> F:
        """Decorator registering the error handler of every namespace."""
        if not callable(exception_handler):
            raise ConfigurationError("on_error_default() must decorate a function.")
        self.default_exception_handler = exception_handler
        return exception_handler

    # -- emitting ----------------------------------------------------------

    def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Emit ``event`` to a sid, a room, a list of rooms or everyone.

        Keywords as in Flask-SocketIO: ``namespace`` (default ``"/"``),
        ``to``/``room`` (default: everyone), ``include_self`` (default
        ``True``), ``skip_sid``, ``callback`` (an ack; needs ``to``).
        """
        namespace = kwargs.pop("namespace", "/") or "/"
        to = kwargs.pop("to", None)
        if to is None:
            to = kwargs.pop("room", None)
        else:
            kwargs.pop("room", None)
        include_self = kwargs.pop("include_self", True)
        skip_sid = kwargs.pop("skip_sid", None)
        if not include_self and skip_sid is None and flask.has_request_context():
            skip_sid = getattr(flask.request, "sid", None)
        check_lease()  # a singleton task that lost its lease emits no more
        callback = kwargs.pop("callback", None)
        if callback is not None:
            callback = self._callback_in_flask_context(callback)
        kwargs.pop("broadcast", None)
        data = _event_data(args)
        self.server.emit(
            event, data, to=to, skip_sid=skip_sid, namespace=namespace,
            callback=callback, **kwargs,
        )

    def call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Emit to one client and wait for its ack (``to=``, ``timeout=60``)."""
        namespace = kwargs.pop("namespace", "/") or "/"
        to = kwargs.pop("to", None) or kwargs.pop("sid", None)
        if to is None and flask.has_request_context():
            to = getattr(flask.request, "sid", None)
        if to is None:
            raise ConfigurationError("call() needs the client: pass to=<sid>.")
        timeout = kwargs.pop("timeout", 60)
        check_lease()
        return self.server.call(
            event, _event_data(args), to=to, namespace=namespace, timeout=timeout,
            **kwargs,
        )

    def send(
        self,
        data: Any,
        json: bool = False,
        namespace: str | None = None,
        to: str | None = None,
        callback: Callable[..., Any] | None = None,
        include_self: bool = True,
        skip_sid: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Send a ``message`` (or ``json`` with ``json=True``) event."""
        to = to or kwargs.pop("room", None)
        self.emit(
            "json" if json else "message", data, namespace=namespace, to=to,
            include_self=include_self, skip_sid=skip_sid, callback=callback, **kwargs,
        )

    def close_room(self, room: str, namespace: str | None = None) -> None:
        """Remove every client from ``room``, on every node."""
        self.server.close_room(room, namespace or "/")

    # -- tasks and serving -------------------------------------------------

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start ``target`` in the async mode's thread kind; ``.join()`` waits.

        As in Flask-SocketIO the task runs in this process only, so every
        node that calls this runs its own copy; for a task the cluster
        should run once, see :meth:`start_singleton_task`.
        """
        return self.server.start_background_task(target, *args, **kwargs)

    def start_singleton_task(self, name: str, target: Callable[..., Any], *args: Any,
                             lease_seconds: float = 5.0, redis_url: str | None = None,
                             **kwargs: Any) -> Any:
        """Run ``target(*args, **kwargs)`` on exactly one node of the cluster.

        Every node may call it (at import time too); the one that holds the
        task's lease in Redis runs it, and if that node dies the lease
        expires after ``lease_seconds`` (default 5 s) and another node starts
        the task afresh. In a task that lost its lease, ``socketio.sleep`` and
        ``emit`` raise :class:`cluster.exceptions.LeaseLost`. ``redis_url``
        defaults to the Redis message queue. Returns a
        :class:`cluster.flask_integration.singleton_tasks.SingletonTask` (``running``,
        ``lease``, ``stop()``). See :mod:`cluster.flask_integration.singleton_tasks`.
        """
        from cluster.flask_integration.singleton_tasks import SingletonTask

        return SingletonTask(self, name, target, args, kwargs,
                             lease_seconds=lease_seconds, redis_url=redis_url)

    def sleep(self, seconds: float = 0) -> None:
        """Sleep without blocking other clients in the current async mode.

        In a singleton task whose lease was lost it raises
        :class:`cluster.exceptions.LeaseLost` (before or after sleeping).
        """
        check_lease()
        self.server.sleep(seconds)
        check_lease()

    def run(self, app: flask.Flask | None = None, host: str | None = None,
            port: int | None = None, **kwargs: Any) -> None:
        """Serve the application (development and single-process use).

        Under eventlet this is the production server of the node runner
        (``python -m cluster node``); in ``threading`` mode it is Werkzeug's
        development server, which needs ``allow_unsafe_werkzeug=True``
        outside debug mode, as in Flask-SocketIO.
        """
        from cluster.runner.serve import run_app

        # Flask-SocketIO's reloader arguments, in the form Werkzeug takes them
        reloader_options = dict(kwargs.pop("reloader_options", None) or {})
        extra_files = kwargs.pop("extra_files", None)
        if extra_files:
            reloader_options["extra_files"] = extra_files
        kwargs.update(reloader_options)
        run_app(self, app or self.app, host=host, port=port, **kwargs)

    def drain(self, grace_seconds: float = 10.0) -> None:
        """Stop taking part: report not-ready, let running handlers finish
        (up to ``grace_seconds``), then send every local client away so it
        reconnects to another node and resumes there. SIGTERM does this."""
        from cluster.runner.serve import drain_node

        drain_node(self, grace_seconds)

    def stop(self) -> None:
        """Stop a server started with :meth:`run`."""
        from cluster.runner.serve import stop_app

        stop_app(self)

    def test_client(self, app: flask.Flask, namespace: str | None = None,
                    query_string: str | None = None, headers: dict[str, str] | None = None,
                    auth: dict[str, Any] | None = None,
                    flask_test_client: Any = None) -> Any:
        """A client that talks to this server in-process, for unit tests."""
        from cluster.flask_integration.testing import SocketIOTestClient

        return SocketIOTestClient(
            app, self, namespace=namespace, query_string=query_string,
            headers=headers, auth=auth, flask_test_client=flask_test_client,
        )

    # -- internals ---------------------------------------------------------

    def _handle_event(self, handler: Callable[..., Any], message: str | None,
                      namespace: str, sid: str | None, *args: Any) -> Any:
        return self.runner.run(handler, message, namespace, sid, *args)

    def _callback_in_flask_context(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Run an ack callback in the Flask context of the emitting handler."""
        if not flask.has_request_context():
            return callback
        sid = getattr(flask.request, "sid", None)
        namespace = getattr(flask.request, "namespace", None) or "/"
        if sid is None:
            return callback
        runner = self.runner

        def ack_in_flask_context(*ack_args: Any) -> Any:
            return runner.run(callback, None, namespace, sid, *ack_args)

        # keeps attributes such as the bus's ack timeout (cluster.bus.with_timeout)
        functools.update_wrapper(ack_in_flask_context, callback)
        return ack_in_flask_context


def _event_data(args: tuple[Any, ...]) -> Any:
    # python-socketio sends a tuple as several arguments and anything else as
    # one; Flask-SocketIO's emit(event, *args) maps onto that
    if len(args) == 1:
        return args[0]
    if not args:
        return None
    return tuple(args)
