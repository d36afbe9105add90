"""The bus backends: they move bytes and nothing else.

- :mod:`.redis_connection`: Redis URL forms (plain, TLS, unix socket,
  Sentinel, Redis Cluster) and the driver options;
- :mod:`.redis_transport`: publish (with the recovery stream's append in
  the same round trip) and listen over Redis pub/sub;
- :mod:`.redis_recovery`: reads of the recovery stream;
- :mod:`.redis_access`: the start-up check of the node's password, ACL and
  TLS trust;
- :mod:`.kombu_transport`: publish and listen over a kombu broker.

A backend implements :class:`cluster.bus.transport.Transport` and imports
only the pipeline's interfaces (:mod:`cluster.bus.transport`,
:mod:`cluster.bus.runtime`, :mod:`cluster.bus.errors`), never the manager
nor the cluster services: :class:`~cluster.bus.redis_manager.RedisManager`
and :class:`~cluster.bus.kombu_manager.KombuManager` compose a backend with
the manager, one level up. This package re-exports nothing, so importing a
backend never imports another one.
"""
