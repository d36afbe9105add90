"""What a node checks about its bus before it serves anyone.

These mistakes must stop a node at start rather than leave it running badly:
an unsigned bus without the explicit opt-out (anyone reaching Redis would
command its clients), and a Redis that refuses the node's password or ACL,
or whose TLS certificate the node does not trust (the bus would retry
forever while the node stays not-ready). A clock further from Redis's than
``max_clock_skew`` stops it too (the other nodes would drop its messages:
see :mod:`.clock`), and so does a ``redis_partitions`` other than the
cluster's (see :mod:`.backends.redis_lanes`). Each raises a
:class:`~.errors.BusConfigurationError` whose message is the fix.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from cluster.bus.backends.redis_access import CHECKED_SCHEMES, check_access, check_clock_of
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.manager import ClusterManager
from cluster.bus.redis_manager import RedisManager
from cluster.bus.signing_policy import check_signing

__all__ = ["check_bus"]


def check_bus(manager: Any, allow_unsigned: bool,
              logger: logging.Logger | None = None) -> None:
    """Refuse an unsigned bus without ``allow_unsigned`` (warn with it), and
    a Redis that refuses us; a local manager (no bus) passes."""
    if not isinstance(manager, ClusterManager):
        return
    check_signing(manager.signed, allow_unsigned, "This node",
                  "pass --allow-unsigned-bus (or set CLUSTER_ALLOW_UNSIGNED_BUS=1)",
                  logger or logging.getLogger("cluster"))
    if isinstance(manager, RedisManager):
        check_access(manager.redis_url, manager.redis_options,
                     max_clock_skew=manager.settings.max_clock_skew)
        if urlparse(manager.redis_url).scheme not in CHECKED_SCHEMES:
            # Sentinel, Redis Cluster: the clock of the server the bus uses
            check_clock_of(manager.new_redis_client, manager.settings.max_clock_skew)
        if isinstance(manager.transport, RedisTransport):
            manager.transport.check_partitions()
