"""The cluster bus: how socket nodes share rooms, broadcasts and acks.

``create_manager(url)`` returns a python-socketio client manager chosen by
the URL scheme (``redis://``, ``rediss://``, ``unix://``,
``redis+sentinel://``, ``redis+cluster://`` → :class:`RedisManager`;
``amqp://`` and any other kombu URL → :class:`KombuManager`). Both speak
JSON only, optionally HMAC-signed (:mod:`.codec` documents the format), and
add to python-socketio's ``PubSubManager``:

``manager.ready``
    ``True`` while connected and subscribed (for ``/readyz``).
``manager.stats()``
    counters and gauges for ``/metrics``; names listed in :mod:`.stats`.
``manager.cluster``
    :class:`ClusterView`: cluster-wide ``room_members``, ``room_size``,
    ``rooms_of``, ``sockets``, ``sockets_join``, ``sockets_leave``,
    ``disconnect_sockets``, ``server_side_emit``/``server_side_call`` with
    ``on`` to register their handlers, ``live_nodes``.
``manager.presence``
    :class:`Presence`: ``on(callback)`` for first-join / last-leave events.
``manager.initialize()`` / ``manager.close()`` / ``manager.flush()``
    start at node start-up (idempotent), stop at shutdown, wait for the
    publish queue to drain.
:func:`with_timeout`
    ack callbacks with their own timeout and an expiry callback.

Layout, and the one direction imports point in (``tests/bus/test_layout.py``
fails on any import cycle, lazy and ``TYPE_CHECKING`` imports included):

- the publish/receive pipeline, flat here: :mod:`.transport` (the interface
  a backend implements, the subscription state, the recovery reads a
  backend may offer), :mod:`.codec` and :mod:`.message_schema`,
  :mod:`.publisher`, :mod:`.outbox`, :mod:`.batch`, :mod:`.sender`,
  :mod:`.receiver`, :mod:`.ordered_delivery`, :mod:`.catch_up`, with the
  shared :mod:`.settings`, :mod:`.stats`, :mod:`.runtime`, :mod:`.errors`;
- :mod:`.backends`: Redis and kombu. They import only the pipeline's
  interfaces, never the manager nor a service;
- :mod:`.services`: node registry and heartbeats, acks, cluster queries,
  presence, membership. They use the pipeline; the pipeline never imports
  them;
- the composers, which nothing above imports: :mod:`.manager`
  (:class:`ClusterManager`), :mod:`.redis_manager` and
  :mod:`.kombu_manager` (the manager with a backend), :mod:`.features`
  (what the node asks of any manager) and :mod:`.startup` (start-up checks).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from cluster.bus.backends.redis_connection import SCHEMES as REDIS_SCHEMES
from cluster.bus.codec import Codec
from cluster.bus.defaults import DEFAULT_CHANNEL
from cluster.bus.errors import (
    BusAccessDenied,
    BusClockSkew,
    BusConfigurationError,
    BusError,
    BusMessageTooLarge,
    BusPublishError,
    BusSerializationError,
    ClusterRequestError,
    ClusterRequestTimeout,
    UnsignedBusError,
)
from cluster.bus.features import BusFeatures, RecoveryReader, bus_features
from cluster.bus.kombu_manager import KombuManager
from cluster.bus.manager import ClusterManager
from cluster.bus.redis_manager import RedisManager
from cluster.bus.services.acks import TimedAck, with_timeout
from cluster.bus.services.membership import LocalManager, MembershipEvents
from cluster.bus.services.presence import Presence
from cluster.bus.services.view import ClusterView
from cluster.bus.settings import BusSettings
from cluster.bus.signing_policy import check_signing
from cluster.bus.stats import COUNTERS, GAUGES
from cluster.bus.transport import Subscription, Transport

__all__ = [
    "create_manager", "ClusterManager", "LocalManager", "MembershipEvents", "RedisManager",
    "KombuManager",
    "ClusterView", "Presence", "Codec", "TimedAck", "with_timeout",
    "COUNTERS", "GAUGES", "BusError", "BusConfigurationError",
    "BusSerializationError", "BusMessageTooLarge", "BusPublishError", "ClusterRequestError",
    "ClusterRequestTimeout", "UnsignedBusError", "BusAccessDenied", "BusClockSkew", "check_signing",
    "bus_features", "BusFeatures", "RecoveryReader", "DEFAULT_CHANNEL",
    "BusSettings", "Transport", "Subscription", "REDIS_SCHEMES",
]


def create_manager(url: str, *, channel: str = DEFAULT_CHANNEL,
                   write_only: bool = False,
                   signing_secret: str | bytes | None = None,
                   options: dict[str, Any] | None = None, logger: Any = None,
                   **settings: Any) -> ClusterManager:
    """Build the bus manager for ``url``.

    :param url: message queue URL; its scheme picks the backend.
    :param channel: pub/sub channel (Redis) or exchange (kombu) name, the
                    same on every node and emitter. Default
                    ``"flask-socketio"``, Flask-SocketIO's.
    :param write_only: for processes that only emit (workers).
    :param signing_secret: shared HMAC secret (>= 16 bytes) or ``None``.
    :param options: driver options: for Redis, redis-py keyword arguments
                    (``password``, ``ssl_ca_certs``...) plus ``cluster:
                    True`` to use Redis Cluster with a ``redis://`` URL and
                    ``sentinel_kwargs``; for kombu, ``kombu.Connection``
                    keyword arguments, with ``exchange_options``,
                    ``queue_options`` and ``producer_options`` as sub-dicts.
    :param logger: logger for bus events (default: the server's).
    :param settings: manager settings (``node_name``, ``buffer_size``,
                     ``buffer_bytes``, ``max_message_bytes``,
                     ``ack_timeout``, ``request_timeout``,
                     ``heartbeat_interval``, ``node_timeout``,
                     ``max_backoff``...), see :class:`BusSettings`.
    """
    if not isinstance(url, str) or "://" not in url:
        raise BusConfigurationError(
            f"Invalid message queue URL {url!r}: expected e.g. "
            f"redis://localhost:6379/0 or amqp://guest:guest@localhost//")
    scheme = urlparse(url).scheme.lower()
    options = dict(options or {})
    common = dict(channel=channel, write_only=write_only, logger=logger,
                  signing_secret=signing_secret, **settings)
    if scheme in REDIS_SCHEMES:
        redis_cluster = bool(options.pop("cluster", False))
        return RedisManager(url, redis_options=options, cluster=redis_cluster,
                            **common)
    sub = {key: options.pop(key, None) for key in
           ("exchange_options", "queue_options", "producer_options")}
    return KombuManager(url, connection_options=options, **sub, **common)
