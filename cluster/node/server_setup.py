"""Building a node's server from the extension's keyword options.

:func:`create_server` sorts the options (the cluster's own, listed in
:data:`cluster.node.server.EXTENSION_OPTIONS`, the rest for python-socketio),
builds the client manager (a bus manager for a ``message_queue`` URL, else
a local one) and the session binding (a Redis store when the bus is Redis).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Mapping

from session_store import MemorySessionStore, RedisSessionStore

from cluster.bus.manager import driver_only
from cluster.node.packets import ClusterPacket
from cluster.sessions.connection_sessions import HOLDER_QUERY, ConnectionSessions
from cluster.sessions.connection_state import MemoryConnectionState, RedisConnectionState
from cluster.exceptions import ConfigurationError
from cluster.node.limits import Limits
from cluster.runner.log_redaction import install as install_log_redaction
from cluster.recovery.replay import RecoveryOptions
from cluster.node.server import EXTENSION_OPTIONS, ClusterServer
from cluster.sessions.leases import SessionLeases, default_interval

if TYPE_CHECKING:
    import flask

    from cluster.flask_integration.extension import SocketIO

DEFAULT_SESSION_TTL = 120.0
DEFAULT_KEY_PREFIX = "sio:sess:"

DEFAULT_CHANNEL = "flask-socketio"


def default_async_mode() -> str:
    """``eventlet`` when eventlet has patched the process, else ``threading``.

    The node runner monkey-patches before importing the application, so the
    same module serves production under eventlet and unit tests (or
    ``flask run``) with threads, without an ``async_mode`` argument.
    """
    if "eventlet" not in sys.modules:
        # not imported means not patched; importing it here would only
        # print eventlet's deprecation warning in threaded processes
        return "threading"
    from eventlet.patcher import is_monkey_patched

    return "eventlet" if is_monkey_patched("socket") else "threading"


def build_manager(options: dict[str, Any], *, write_only: bool) -> Any:
    """The client manager for ``options``: a bus manager or a local one."""
    from cluster.bus import LocalManager, create_manager

    url = options.get("message_queue")
    if not url:
        return LocalManager()
    recovery = RecoveryOptions.from_option(options.get("connection_state_recovery"))
    settings: dict[str, Any] = {}
    if options.get("node_name"):
        settings["node_name"] = options["node_name"]
    if recovery is not None:
        settings["recovery_window"] = recovery.max_disconnection_duration
    return create_manager(
        url,
        channel=options.get("channel") or DEFAULT_CHANNEL,
        write_only=write_only,
        signing_secret=options.get("signing_secret"),
        options=options.get("message_queue_options"),
        logger=logging.getLogger("cluster.bus"),
        **settings,
    )


def create_server(ext: "SocketIO", app: "flask.Flask | None",
                  options: dict[str, Any]) -> ClusterServer:
    """Build the server for ``ext`` from the extension's keyword options."""
    server_kwargs = {k: v for k, v in options.items() if k not in EXTENSION_OPTIONS}
    if server_kwargs.get("async_mode") is None:
        # None is Flask-SocketIO's "choose for me" (its example app passes it)
        server_kwargs["async_mode"] = default_async_mode()
    if server_kwargs.get("serializer", "default") == "default":
        # python-socketio's JSON packets, with socket.io-parser's bound on
        # binary attachments
        server_kwargs["serializer"] = ClusterPacket
    write_only = bool(options.get("write_only", app is None))
    if write_only and not options.get("message_queue"):
        raise ConfigurationError(
            "A SocketIO without a Flask app is a write-only emitter and needs "
            "message_queue=<bus URL> (e.g. 'redis://localhost:6379/0')."
        )
    manager = options.get("client_manager") or build_manager(options, write_only=write_only)
    server = ClusterServer(
        client_manager=manager,
        max_backlog=options.get("max_backlog"),
        limits=Limits.from_options(options),
        **server_kwargs,
    )
    # python-socketio's and python-engineio's own loggers log whole
    # packets, resume ids included, when logger=/engineio_logger= are on
    install_log_redaction(server)
    server.extension = ext
    server.options = options
    server.recovery = RecoveryOptions.from_option(options.get("connection_state_recovery"))
    server.socketio_path = (options.get("path") or options.get("resource") or "socket.io").strip("/")
    ext.server = server  # the session binding registers on its manager
    ext.sessions = create_connection_sessions(ext, options)
    return server


def record_secret(socketio: "SocketIO", options: Mapping[str, Any]) -> Any:
    """What the Redis session store derives its record MAC key from.

    The bus signing secret when there is one, else the application's
    ``SECRET_KEY`` (read when needed, so one set after ``SocketIO(app)``
    counts): both are shared by every node of a deployment, as the key must
    be. Neither (no signing, no ``SECRET_KEY``): records carry no MAC.
    """
    signing = options.get("signing_secret")
    if signing:
        return signing
    return lambda: getattr(socketio.app, "secret_key", None) if socketio.app else None


def create_connection_sessions(socketio: "SocketIO", options: Mapping[str, Any]) -> ConnectionSessions:
    """The session binding for the extension's options.

    ``session_store``: a :class:`session_store.SessionStore`, ``"memory"``,
    or ``None`` (default: Redis when the bus URL is a Redis URL, else
    in-connection forks only). ``session_ttl`` (default 120 s) is how long a
    session may be resumed after its connection ends; ``session_key_prefix``
    (default ``"sio:sess:"``) namespaces the keys.
    """
    recovery = options.get("connection_state_recovery")
    default_ttl = DEFAULT_SESSION_TTL
    if isinstance(recovery, dict) and recovery.get("max_disconnection_duration"):
        # a session must outlive the window in which its client may recover
        default_ttl = float(recovery["max_disconnection_duration"])
    ttl = float(options.get("session_ttl") or default_ttl)
    prefix = options.get("session_key_prefix") or DEFAULT_KEY_PREFIX
    identity_loader = options.get("resume_identity")
    store = options.get("session_store")
    if store is None:
        url = options.get("redis_url") or options.get("message_queue")
        if isinstance(url, str) and url.split(":", 1)[0] in ("redis", "rediss", "unix"):
            # the bus's own settings (buffer_bytes, max_message_bytes...)
            # ride in message_queue_options too; redis-py gets only its own
            store = RedisSessionStore(url, key_prefix=prefix, ttl=ttl,
                                      lease_ttl=ttl + default_interval(ttl),
                                      redis_options=driver_only(options.get("message_queue_options")),
                                      secret=record_secret(socketio, options))
    elif store == "memory":
        store = MemorySessionStore(key_prefix=prefix, ttl=ttl,
                                   lease_ttl=ttl + default_interval(ttl))
    if store is None:
        return ConnectionSessions(socketio, identity_loader=identity_loader)
    if isinstance(store, RedisSessionStore):
        state: Any = RedisConnectionState(store.redis, store.key_prefix,
                                          secret=record_secret(socketio, options))
    else:
        state = MemoryConnectionState()
    sessions = ConnectionSessions(socketio, store=store, state=state,
                                  identity_loader=identity_loader,
                                  stable_resume_ids=bool(options.get("connection_state_recovery")))
    server = socketio.server
    manager = server.manager if server is not None else None
    cluster = getattr(manager, "cluster", None)
    if cluster is not None:
        cluster.on(HOLDER_QUERY, sessions.holds)
    if server is not None:
        sessions.leases = SessionLeases(
            sessions, default_interval(store.ttl),
            restart_point=lambda: _recovery_restart_point(manager),
            reconnects=lambda: _bus_reconnects(manager),
            spawn=server.start_background_task, sleep=server.sleep)
    return sessions


def _recovery_restart_point(manager: Any) -> str | None:
    point = getattr(manager, "recovery_restart_point", None)
    return point() if callable(point) and getattr(manager, "logs_recovery", False) else None


def _bus_reconnects(manager: Any) -> int:
    stats = getattr(manager, "stats", None)
    return int(stats().get("reconnects", 0)) if callable(stats) else 0
