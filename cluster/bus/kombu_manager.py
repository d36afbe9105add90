"""KombuManager: the cluster bus over a kombu broker (RabbitMQ...); the
transport itself is :mod:`.backends.kombu_transport`."""
from __future__ import annotations

from typing import Any

from cluster.bus.backends.kombu_transport import KombuTransport
from cluster.bus.defaults import DEFAULT_CHANNEL
from cluster.bus.errors import BusConfigurationError
from cluster.bus.manager import ClusterManager
from cluster.bus.settings import split_settings

__all__ = ["KombuManager"]


class KombuManager(ClusterManager):
    """Cluster bus over a kombu broker.

    :param url: kombu URL (``amqp://guest:guest@localhost:5672//``); a
                ``kombu+`` prefix forces kombu for schemes that would
                otherwise pick another backend (``kombu+redis://``).
    :param connection_options: keyword arguments of ``kombu.Connection``,
                               except the bus limits (``buffer_size``,
                               ``buffer_bytes``, ``max_message_bytes``),
                               which stay with the manager.
    :param exchange_options: keyword arguments of ``kombu.Exchange``.
    :param queue_options: keyword arguments of ``kombu.Queue``.
    :param producer_options: keyword arguments of ``Producer.publish``.

    Other keyword arguments: see :class:`~.manager.ClusterManager`.
    Connection state recovery needs Redis and is refused here.
    """

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672//",
                 channel: str = DEFAULT_CHANNEL, write_only: bool = False,
                 logger: Any = None, json: Any = None,
                 connection_options: dict[str, Any] | None = None,
                 exchange_options: dict[str, Any] | None = None,
                 queue_options: dict[str, Any] | None = None,
                 producer_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        connection_options = dict(connection_options or {})
        kwargs = split_settings(connection_options, kwargs)
        if kwargs.get("recovery_window"):
            raise BusConfigurationError(
                "Connection state recovery needs a Redis bus (it keeps recent emits in a "
                "Redis Stream); use a redis:// message queue or turn recovery off.")
        if kwargs.pop("redis_partitions", 1) != 1:
            raise BusConfigurationError(
                "redis_partitions spreads a Redis Cluster bus over its shards; a kombu bus "
                "routes by the queues' bindings already. Remove redis_partitions.")
        transport = KombuTransport(url, channel, "", connection_options=connection_options,
                                   exchange_options=exchange_options,
                                   queue_options=queue_options,
                                   producer_options=producer_options)
        super().__init__(transport, channel=channel, write_only=write_only,
                         logger=logger, json=json, **kwargs)
        # one exclusive queue per node, named after its host id
        transport.queue_name = f"{channel}.{self.host_id}"
        self.url = transport.url
