"""Building a node's parts from its :class:`cluster.config.NodeConfig`.

:func:`create_server` builds the server (with the client manager: a bus
manager for a ``message_queue`` URL, else a local one) and the session
binding (a Redis store when the bus is Redis), and returns both for the
extension to keep; it reaches into nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster import compat, runtime
from cluster.bus.features import bus_features
from cluster.bus.settings import driver_only
from cluster.config import BusConfig, NodeConfig
from cluster.exceptions import ConfigurationError
from cluster.node.packets import ClusterPacket
from cluster.node.server import ClusterServer
from cluster.recovery.replay import RecoveryOptions
from cluster.runner.log_redaction import install as install_log_redaction
from cluster.sessions.connection_sessions import HOLDER_QUERY, ConnectionSessions
from cluster.sessions.connection_state import MemoryConnectionState, RedisConnectionState
from cluster.sessions.leases import SessionLeases, default_interval
from session_store import MemorySessionStore, RedisSessionStore
from session_store.redis_client import CLUSTER_SCHEMES
from session_store.write_batches import WriteBatches

if TYPE_CHECKING:

    from cluster.flask_integration.extension import SocketIO

#: URLs whose Redis also keeps the sessions (a Redis Cluster too: the store
#: makes its own RedisCluster client, see session_store.redis_client)
REDIS_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)


@dataclass(frozen=True)
class NodeParts:
    """What :func:`create_server` built."""

    server: ClusterServer
    sessions: ConnectionSessions


def default_async_mode() -> str:
    """``eventlet`` or ``gevent`` when that library has patched the
    process, else ``threading``.

    The node runner monkey-patches (with ``--async-mode``) before importing
    the application, so the same module serves production under eventlet
    or gevent and unit tests (or ``flask run``) with threads, without an
    ``async_mode`` argument.
    """
    return runtime.patched_mode() or "threading"


def check_async_mode(async_mode: str) -> None:
    """Refuse a green ``async_mode`` this process cannot run: its library is
    missing, or the other one has monkey-patched the process."""
    if async_mode not in runtime.MODES:
        return  # threading, or what python-socketio itself refuses
    patched = runtime.patched_mode()
    if patched is not None and patched != async_mode:
        raise ConfigurationError(
            f"async_mode={async_mode!r}, but {patched} has monkey-patched this process: "
            f"remove async_mode= from SocketIO(...) or set it to {patched!r}, or run the "
            f"node with --async-mode {async_mode} (CLUSTER_ASYNC_MODE={async_mode}).")
    try:
        runtime.load(async_mode)
    except runtime.RuntimeUnavailableError as exc:
        raise ConfigurationError(str(exc)) from None


def build_manager(bus: BusConfig, recovery: RecoveryOptions | None, *, write_only: bool) -> Any:
    """The client manager for ``bus``: the one given, a bus manager, or a local one."""
    from cluster.bus import LocalManager, create_manager

    if bus.client_manager is not None:
        return bus.client_manager
    if not bus.url:
        return LocalManager()
    settings: dict[str, Any] = {}
    if bus.node_name:
        settings["node_name"] = bus.node_name
    if recovery is not None:
        settings["recovery_window"] = recovery.max_disconnection_duration
    return create_manager(
        bus.url,
        channel=bus.channel,
        write_only=write_only,
        signing_secret=bus.signing_secret,
        options=dict(bus.driver_options) if bus.driver_options is not None else None,
        logger=logging.getLogger("cluster.bus"),
        **settings,
    )


def create_server(config: NodeConfig, extension: SocketIO) -> NodeParts:
    """Build the server and the session binding ``extension`` serves with."""
    server_kwargs = dict(config.server_options)
    if server_kwargs.get("async_mode") is None:
        # None is Flask-SocketIO's "choose for me" (its example app passes it)
        server_kwargs["async_mode"] = default_async_mode()
    check_async_mode(server_kwargs["async_mode"])
    if server_kwargs.get("serializer", "default") == "default":
        # python-socketio's JSON packets, with socket.io-parser's bound on
        # binary attachments
        server_kwargs["serializer"] = ClusterPacket
    manager = build_manager(config.bus, config.recovery, write_only=config.bus.write_only)
    server = ClusterServer(
        client_manager=manager,
        max_backlog=config.transport.max_backlog,
        write_window=config.transport.write_window,
        limits=config.limits,
        **server_kwargs,
    )
    # python-socketio's and python-engineio's own loggers log whole
    # packets, resume ids included, when logger=/engineio_logger= are on
    install_log_redaction(server)
    server.extension = extension  # its hooks bind and persist the extension's sessions
    server.config = config
    server.recovery = config.recovery
    server.socketio_path = config.transport.path
    return NodeParts(server, create_connection_sessions(extension, config, server))


def record_secret(socketio: SocketIO, config: NodeConfig) -> Any:
    """What the Redis session store derives its record MAC key from.

    The bus signing secret when there is one, else the application's
    ``SECRET_KEY`` (read when needed, so one set after ``SocketIO(app)``
    counts): both are shared by every node of a deployment, as the key must
    be. Neither (no signing, no ``SECRET_KEY``): records carry no MAC.
    """
    if config.bus.signing_secret:
        return config.bus.signing_secret
    return lambda: getattr(socketio.app, "secret_key", None) if socketio.app else None


def create_connection_sessions(socketio: SocketIO, config: NodeConfig,
                               server: ClusterServer) -> ConnectionSessions:
    """The session binding for ``config.sessions`` on ``server``.

    ``session_store``: a :class:`session_store.SessionStore`, ``"memory"``,
    or ``None`` (default: Redis when the bus URL is a Redis URL, else
    in-connection forks only). ``session_ttl`` (see
    :class:`cluster.config.SessionConfig`) is how long a session may be
    resumed after its connection ends; ``session_key_prefix`` namespaces
    the keys.
    """
    settings = config.sessions
    ttl, prefix = settings.ttl, settings.key_prefix
    store = settings.store
    if store is None:
        url = config.redis_url or config.bus.url
        if url and url.split(":", 1)[0] in REDIS_SCHEMES:
            # the bus's own settings (buffer_bytes, max_message_bytes...)
            # ride in message_queue_options too; redis-py gets only its own
            driver_options = dict(config.bus.driver_options or {})
            store = RedisSessionStore(url, key_prefix=prefix, ttl=ttl,
                                      lease_ttl=ttl + default_interval(ttl),
                                      redis_options=driver_only(driver_options),
                                      secret=record_secret(socketio, config))
    elif store == "memory":
        store = MemorySessionStore(key_prefix=prefix, ttl=ttl,
                                   lease_ttl=ttl + default_interval(ttl))
    if store is None:
        return ConnectionSessions(socketio, identity_loader=settings.resume_identity)
    if isinstance(store, RedisSessionStore):
        # one group commit for the session store's and the records' writes
        batches = WriteBatches(store.redis, spawn=server.start_background_task,
                               event=server.eio.create_event)
        if store.batches is None:
            store.batches = batches
        state: Any = RedisConnectionState(
            store.redis, store.key_prefix, secret=record_secret(socketio, config),
            batches=batches)
    else:
        state = MemoryConnectionState()
    sessions = ConnectionSessions(socketio, store=store, state=state,
                                  identity_loader=settings.resume_identity,
                                  stable_resume_ids=config.recovery is not None)
    features = bus_features(server.manager)
    if features.cluster is not None:
        features.cluster.on(HOLDER_QUERY, _holds_unless_paused(server, sessions))
    fence_sessions(server, sessions)
    sessions.leases = SessionLeases(
        sessions, default_interval(store.ttl),
        restart_point=lambda: _recovery_restart_point(features),
        reconnects=lambda: int(features.stats().get("reconnects", 0)),
        spawn=server.start_background_task, sleep=server.sleep)
    return sessions


def fence_sessions(server: Any, sessions: ConnectionSessions) -> None:
    """A connection fenced by a pause (see :mod:`.pause_fence`) no longer
    holds its session from the moment the pause is found, before it is
    closed: its client has moved on and resumes elsewhere."""
    eio = server.eio
    if not hasattr(eio, "pause_fence"):
        return

    def fenced(eio_sid: str) -> None:
        environ = compat.socketio_environ(server, eio_sid)
        if environ is not None:
            sessions.release(environ)

    eio.on_fenced = fenced


def _holds_unless_paused(server: Any, sessions: ConnectionSessions) -> Any:
    """The holder query's answer: whether a live connection here holds the
    session, after noting whether this node was just paused (which fences
    the connections from before the pause first)."""
    fence = getattr(server.eio, "pause_fence", None)

    def holds(session_id: str) -> bool:
        if fence is not None:
            fence.check()
        return sessions.holds(session_id)

    return holds


def _recovery_restart_point(features: Any) -> str | None:
    reader = features.recovery
    return reader.restart_point() if reader is not None else None
