"""RedisManager: the cluster bus over Redis (plain, TLS, unix socket,
Sentinel, Redis Cluster).

The URL forms and the driver options are described in
:mod:`.backends.redis_connection`; publishing and listening in
:mod:`.backends.redis_transport`; the recovery stream's reads in
:mod:`.backends.redis_recovery`. This module only builds them for a manager.
"""
from __future__ import annotations

from typing import Any

from cluster.bus.backends.redis_connection import SCHEMES, RedisConnector
from cluster.bus.backends.redis_recovery import RedisRecoveryReader
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.defaults import DEFAULT_CHANNEL
from cluster.bus.errors import Dropped
from cluster.bus.manager import ClusterManager
from cluster.bus.settings import split_settings
from cluster.recovery.stream import RecoveryLog

__all__ = ["RedisManager", "SCHEMES"]


class RedisManager(ClusterManager):
    """Cluster bus over Redis pub/sub.

    :param url: Redis URL; default ``redis://localhost:6379/0``.
    :param redis_options: driver options passed to redis-py (bus settings
        among them are taken out first, see :func:`.settings.split_settings`).
    :param cluster: force Redis Cluster mode for a ``redis://`` URL.
    :param redis_partitions: on Redis Cluster, how many lanes room and node
        channels are spread over, so that every shard carries a share of the
        bus (see :mod:`.backends.redis_lanes`); 1 (the default) keeps the
        whole bus in one slot. Every node and emitter must use the same
        value. Not with connection state recovery (yet).

    Other keyword arguments: see :class:`~.manager.ClusterManager`.
    """

    def __init__(self, url: str = "redis://localhost:6379/0",
                 channel: str = DEFAULT_CHANNEL, write_only: bool = False,
                 logger: Any = None, json: Any = None,
                 redis_options: dict[str, Any] | None = None,
                 cluster: bool = False, **kwargs: Any) -> None:
        options = dict(redis_options or {})
        kwargs = split_settings(options, kwargs)
        partitions = kwargs.pop("redis_partitions", 1)
        connector = RedisConnector(url, options, redis_cluster=cluster, channel=channel)
        window = kwargs.get("recovery_window")
        log = None
        if window:
            log = RecoveryLog(channel, self._open_archived, window,
                              kwargs.get("recovery_max_entries", 100_000),
                              sharded=connector.sharded)
        transport = RedisTransport(connector, log, partitions)
        super().__init__(transport, channel=channel, write_only=write_only,
                         logger=logger, json=json, **kwargs)
        # the parts get the manager's logger, which follows the server's
        connector.logger = self.publisher.logger
        if log is not None:
            log.logger = self.publisher.logger
            log.on_reset = lambda: self.bus_stats.incr("recovery_stream_resets")
            transport.recovery = RedisRecoveryReader(connector, log, self.publisher.logger,
                                                     self._restart_mark, self.runtime,
                                                     count=self.bus_stats.incr)
        self.redis_url = url
        self.redis_options = connector.options

    def _open_archived(self, payload: bytes) -> dict[str, Any] | None:
        try:
            return self.codec.open_archived(payload)[0]
        except Dropped:
            return None

    def _restart_mark(self) -> bytes:
        """A sealed non-emit message, appended to an empty stream as the
        point a restored session's history starts from."""
        return self.codec.seal(self.codec.dumps(
            {"method": "heartbeat", "host_id": self.host_id, "name": self.node_name}),
            self.host_id)
