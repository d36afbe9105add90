"""What the bus's parts may do on the bus: the narrow interface the
manager hands to cluster queries and presence instead of itself."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.stats import BusStats


@dataclasses.dataclass(frozen=True)
class BusLink:
    """:param publish: :meth:`cluster.bus.publisher.Publisher.publish`.
    :param dumps: serializes a message, raising at the caller.
    :param spawn: runs ``func(*args)`` in a task of its own, errors logged.
    :param nodes: the live nodes, this one included.
    :param ready: whether the bus is connected and subscribed.
    :param event: makes an event of the server's async mode.
    """

    host_id: str
    publish: Callable[..., bool]
    dumps: Callable[[dict[str, Any]], str]
    spawn: Callable[..., Any]
    nodes: NodeRegistry
    logger: logging.Logger
    stats: BusStats
    ready: Callable[[], bool]
    event: Callable[[], Any]
    write_only: bool = False
