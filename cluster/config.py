"""One node's configuration, typed, validated once.

``SocketIO(app, **kwargs)`` keeps Flask-SocketIO's keyword arguments as its
API; :meth:`NodeConfig.from_options` turns them, once, into a frozen
:class:`NodeConfig` that the node's parts read fields of (the server holds
it as ``server.config``). The node runner's flags (and the environment it
reads at the edge) become a new config with :meth:`NodeConfig.with_overrides`,
applied once by ``SocketIO.reconfigure``; nothing reads an options dict
afterwards.

The shape::

    NodeConfig
    ├── bus: BusConfig              message_queue, channel, write_only,
    │                               signing_secret, message_queue_options,
    │                               node_name, client_manager
    ├── sessions: SessionConfig     manage_session, session_store, session_ttl,
    │                               session_key_prefix, resume_identity
    ├── limits: Limits              cluster.node.limits (rates, rooms, connect
    │                               timeout, replay bounds)
    ├── recovery: RecoveryOptions   connection_state_recovery (None: off)
    ├── transport: TransportConfig  max_backlog, write_window,
    │                               websocket_compression, tcp_nodelay,
    │                               max_connections, HTTP timeouts, path
    ├── redis_url                   the Redis of sessions and singleton leases
    │                               when the bus is not Redis
    └── server_options              everything else, for python-socketio

Every mistake found here raises :class:`cluster.exceptions.ConfigurationError`
naming the option and a value that works.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cluster.bus.defaults import DEFAULT_CHANNEL
from cluster.exceptions import ConfigurationError
from cluster.node.frame_writer import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_WRITE_WINDOW,
    checked_write_window,
)
from cluster.node.limits import Limits
from cluster.recovery.replay import RecoveryOptions
from session_store import DEFAULT_KEY_PREFIX, DEFAULT_TTL

__all__ = [
    "BusConfig",
    "CLUSTER_OPTIONS",
    "DEFAULT_HTTP_BODY_TIMEOUT",
    "DEFAULT_HTTP_HEADER_TIMEOUT",
    "DEFAULT_HTTP_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_SESSION_KEY_PREFIX",
    "DEFAULT_SESSION_TTL",
    "NodeConfig",
    "SessionConfig",
    "TransportConfig",
]

#: seconds a session stays resumable after its connection ends
DEFAULT_SESSION_TTL = DEFAULT_TTL
#: the prefix of the session store's Redis keys
DEFAULT_SESSION_KEY_PREFIX = DEFAULT_KEY_PREFIX
#: concurrent connections one node serves (eventlet's own 1,024 silently hangs)
DEFAULT_MAX_CONNECTIONS = 100_000
#: seconds a client has to send a complete request head (HAProxy's
#: ``timeout http-request`` in the shipped config is 10 s too)
DEFAULT_HTTP_HEADER_TIMEOUT = 10.0
#: seconds an HTTP connection may stay silent: between keep-alive requests,
#: or with a request body or a response stuck; longer than a balancer's
#: own keep-alive timeout, so that the balancer, not the node, closes
#: first and never sends a request into a closing connection
DEFAULT_HTTP_IDLE_TIMEOUT = 60.0
#: seconds a request may spend waiting for its body, in total (see
#: cluster.runner.body_deadline): a polling POST takes milliseconds, and
#: a full 1 MB body arrives in it at 35 KB/s
DEFAULT_HTTP_BODY_TIMEOUT = 30.0
DEFAULT_SOCKETIO_PATH = "socket.io"

#: the keyword arguments the cluster consumes; every other one goes to
#: python-socketio's ``Server`` (and python-engineio's)
CLUSTER_OPTIONS = frozenset({
    "manage_session", "message_queue", "channel", "write_only",
    "message_queue_options", "signing_secret", "session_store", "session_ttl",
    "session_key_prefix", "connection_state_recovery",
    "websocket_compression", "tcp_nodelay", "max_connections",
    "max_events_per_second", "max_backlog", "redis_url", "path", "resource", "resume_identity",
    "node_name", "max_rooms_per_connection", "max_namespaces_per_connection",
    "connect_timeout", "max_replay_packets", "max_concurrent_connects",
    "max_replay_bytes", "http_header_timeout", "http_idle_timeout", "client_manager",
    "http_body_timeout", "write_window",
})


@dataclass(frozen=True)
class BusConfig:
    """How the node joins the cluster.

    ``url`` ``None`` is a single node (a local manager); ``client_manager``,
    when given, is used instead of one built from ``url``.
    """

    url: str | None = None
    channel: str = DEFAULT_CHANNEL
    write_only: bool = False
    signing_secret: str | bytes | None = None
    driver_options: Mapping[str, Any] | None = None
    node_name: str | None = None
    client_manager: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class SessionConfig:
    """The forked session: where it persists and for how long.

    ``ttl`` is resolved: ``session_ttl``, else the recovery window (a
    session must outlive the time its client may recover in), else
    :data:`DEFAULT_SESSION_TTL`.
    """

    manage_session: bool = True
    store: Any = field(default=None, compare=False)
    ttl: float = DEFAULT_SESSION_TTL
    key_prefix: str = DEFAULT_SESSION_KEY_PREFIX
    resume_identity: Callable[[Any], str | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TransportConfig:
    """The node's sockets: backlog, compression, Nagle, HTTP timeouts.

    A timeout of ``None`` is switched off.
    """

    max_backlog: int = DEFAULT_MAX_BACKLOG
    #: seconds a frame may wait for the next ones on a websocket streamed to
    write_window: float = DEFAULT_WRITE_WINDOW
    websocket_compression: bool = False
    tcp_nodelay: bool = True
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    http_header_timeout: float | None = DEFAULT_HTTP_HEADER_TIMEOUT
    http_idle_timeout: float | None = DEFAULT_HTTP_IDLE_TIMEOUT
    http_body_timeout: float | None = DEFAULT_HTTP_BODY_TIMEOUT
    path: str = DEFAULT_SOCKETIO_PATH


@dataclass(frozen=True)
class NodeConfig:
    """One node's configuration (see the module doc for its shape)."""

    bus: BusConfig = field(default_factory=BusConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    limits: Limits = field(default_factory=Limits)
    recovery: RecoveryOptions | None = None
    transport: TransportConfig = field(default_factory=TransportConfig)
    redis_url: str | None = None
    #: the keyword arguments for python-socketio's ``Server``
    server_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), compare=False)
    #: the keyword arguments this config was built from, for with_overrides
    source: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, has_app: bool = True) -> NodeConfig:
        """Validate the extension's keyword arguments into a config.

        ``has_app``: whether a Flask app is attached; without one the
        extension is a write-only emitter unless ``write_only=False``.
        """
        options = dict(options)
        recovery = _recovery(options.get("connection_state_recovery"))
        bus = BusConfig(
            url=_optional_str(options, "message_queue", "message_queue='redis://localhost:6379/0'"),
            channel=_channel(options.get("channel")),
            write_only=_flag(options, "write_only", not has_app),
            signing_secret=_secret(options.get("signing_secret")),
            driver_options=_mapping(options, "message_queue_options"),
            node_name=_optional_str(options, "node_name", "node_name='node-1'"),
            client_manager=options.get("client_manager"),
        )
        if bus.write_only and not bus.url:
            raise ConfigurationError(
                "A SocketIO without a Flask app is a write-only emitter and needs "
                "message_queue=<bus URL> (e.g. 'redis://localhost:6379/0').")
        return cls(
            bus=bus,
            sessions=_sessions(options, recovery),
            limits=Limits.from_options(options),
            recovery=recovery,
            transport=_transport(options),
            redis_url=_optional_str(options, "redis_url", "redis_url='redis://localhost:6379/0'"),
            server_options=MappingProxyType(
                {k: v for k, v in options.items() if k not in CLUSTER_OPTIONS}),
            source=MappingProxyType(options),
        )

    def with_overrides(self, **options: Any) -> NodeConfig:
        """This config with some keyword options replaced (the node
        runner's flags), validated as :meth:`from_options` validates them.

        ``None`` values are ignored: a flag that was not given keeps the
        application's setting.
        """
        given = {k: v for k, v in options.items() if v is not None}
        if not given:
            return self
        merged = dict(self.source, **given)
        if "client_manager" not in given and "message_queue" in given:
            # a new bus URL means a manager built for it, not the old one
            merged.pop("client_manager", None)
        # the bus side is resolved already: an emitter stays one
        merged.setdefault("write_only", self.bus.write_only)
        return NodeConfig.from_options(merged)

    def without(self, *names: str) -> NodeConfig:
        """This config with keyword options removed (back to their defaults)."""
        merged = {k: v for k, v in self.source.items() if k not in names}
        merged.setdefault("write_only", self.bus.write_only)
        return NodeConfig.from_options(merged)

    def replace(self, **parts: Any) -> NodeConfig:
        """``dataclasses.replace`` of whole parts (``limits=Limits(...)``)."""
        return dataclasses.replace(self, **parts)


# -- validation ----------------------------------------------------------------

def _optional_str(options: Mapping[str, Any], name: str, example: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string (got {value!r}); e.g. {example}.")
    return value


def _channel(value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_CHANNEL
    if not isinstance(value, str):
        raise ConfigurationError(
            f"channel must be a string (got {value!r}); e.g. channel={DEFAULT_CHANNEL!r}, "
            "the same on every node and emitter.")
    return value


def _secret(value: Any) -> str | bytes | None:
    if value is None or value == "" or value == b"":
        return None
    if not isinstance(value, (str, bytes)):
        raise ConfigurationError(
            f"signing_secret must be a string or bytes (got {type(value).__name__}); pass "
            "the secret every node and emitter shares, e.g. from $CLUSTER_SIGNING_SECRET.")
    return value


def _flag(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False (got {value!r}).")
    return value


def _mapping(options: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{name} must be a dict of driver options (got {type(value).__name__}); e.g. "
            f"{name}={{'socket_timeout': 5}}.")
    return value


def _number(options: Mapping[str, Any], name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a number of seconds (got {value!r}).")
    return float(value)


def _recovery(value: Any) -> RecoveryOptions | None:
    try:
        return RecoveryOptions.from_option(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"connection_state_recovery: {exc} Use e.g. connection_state_recovery="
            "{'max_disconnection_duration': 120, 'skip_connect_handler': False}, "
            "or None to leave it off.") from exc


def _sessions(options: Mapping[str, Any], recovery: RecoveryOptions | None) -> SessionConfig:
    ttl = _number(options, "session_ttl")
    if ttl is not None and ttl < 0:
        raise ConfigurationError(
            f"session_ttl must be a positive number of seconds (got {ttl:g}); e.g. "
            f"session_ttl={DEFAULT_SESSION_TTL:g}.")
    if not ttl:
        # a session must outlive the window in which its client may recover
        ttl = recovery.max_disconnection_duration if recovery is not None else DEFAULT_SESSION_TTL
    store = options.get("session_store")
    if store is not None and store != "memory":
        from session_store import SessionStore

        if not isinstance(store, SessionStore):
            raise ConfigurationError(
                f"session_store must be None (Redis when the bus is Redis), 'memory' or a "
                f"session_store.SessionStore (got {store!r}).")
    identity = options.get("resume_identity")
    if identity is not None and not callable(identity):
        raise ConfigurationError(
            "resume_identity must be a function f(auth) -> str | None (got "
            f"{type(identity).__name__}).")
    prefix = options.get("session_key_prefix") or DEFAULT_SESSION_KEY_PREFIX
    if not isinstance(prefix, str):
        raise ConfigurationError(
            f"session_key_prefix must be a string (got {prefix!r}); e.g. "
            f"session_key_prefix={DEFAULT_SESSION_KEY_PREFIX!r}.")
    manage = options.get("manage_session", True)
    return SessionConfig(manage_session=bool(manage), store=store, ttl=float(ttl),
                         key_prefix=prefix, resume_identity=identity)


def _timeout(options: Mapping[str, Any], name: str, default: float) -> float | None:
    """``options[name]`` in seconds; ``None`` when switched off (None or 0)."""
    value = options.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(
            f"{name}={value!r}: use a number of seconds (default {default:g}), or None or 0 "
            f"to switch the timeout off.")
    return float(value) or None


def _transport(options: Mapping[str, Any]) -> TransportConfig:
    backlog = options.get("max_backlog")
    if backlog is None:
        backlog = DEFAULT_MAX_BACKLOG
    elif isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1024:
        raise ConfigurationError(
            f"max_backlog must be a whole number of bytes, at least 1024 (got "
            f"{backlog!r}); e.g. max_backlog=4 * 1024 * 1024 for 4 MiB.")
    connections = options.get("max_connections")
    if connections is None:
        connections = DEFAULT_MAX_CONNECTIONS
    elif isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise ConfigurationError(
            f"max_connections must be a positive whole number (got {connections!r}); e.g. "
            f"max_connections={DEFAULT_MAX_CONNECTIONS}.")
    path = options.get("path") or options.get("resource") or DEFAULT_SOCKETIO_PATH
    if not isinstance(path, str):
        raise ConfigurationError(f"path must be a string (got {path!r}); e.g. path='socket.io'.")
    return TransportConfig(
        max_backlog=backlog,
        write_window=checked_write_window(
            DEFAULT_WRITE_WINDOW if options.get("write_window") is None
            else options["write_window"]),
        websocket_compression=bool(options.get("websocket_compression", False)),
        tcp_nodelay=bool(options.get("tcp_nodelay", True)),
        max_connections=connections,
        http_header_timeout=_timeout(options, "http_header_timeout", DEFAULT_HTTP_HEADER_TIMEOUT),
        http_idle_timeout=_timeout(options, "http_idle_timeout", DEFAULT_HTTP_IDLE_TIMEOUT),
        http_body_timeout=_timeout(options, "http_body_timeout", DEFAULT_HTTP_BODY_TIMEOUT),
        path=path.strip("/"),
    )
