"""What the node asks of its client manager, whichever manager it is.

A node runs with one of three kinds of python-socketio client manager: a
cluster bus (:class:`~.manager.ClusterManager`), the single-node
:class:`~.services.membership.LocalManager`, or one a user passed in
(``client_manager=``, a stock python-socketio manager). The node's parts
(readiness, metrics, recovery, cluster queries, presence, shutdown) ask
their questions here, through :func:`bus_features`, instead of probing the
manager for attributes: one place knows what each kind can answer, and a
manager without a bus answers as a single node would.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from cluster.bus.manager import ClusterManager
from cluster.bus.services.presence import Presence
from cluster.bus.services.view import ClusterView
from cluster.bus.transport import RecoveryReader

__all__ = ["BusFeatures", "RecoveryReader", "SingleNode", "bus_features"]


class BusFeatures(Protocol):
    """The node-facing surface of a client manager."""

    @property
    def ready(self) -> bool: ...
    @property
    def knows_peers(self) -> bool: ...
    @property
    def logs_recovery(self) -> bool: ...
    @property
    def cluster(self) -> ClusterView | None: ...
    @property
    def presence(self) -> Presence | None: ...
    @property
    def recovery(self) -> RecoveryReader | None: ...
    def await_rooms(self, namespace: str, rooms: Iterable[Any], timeout: float) -> bool: ...
    def follow_waits_deferred(self) -> AbstractContextManager[None]: ...
    def stats(self) -> dict[str, int | float]: ...
    def new_redis_client(self) -> Any: ...
    def close(self, timeout: float = 2.0) -> None: ...


class SingleNode:
    """The answers of a manager without a bus: always ready, alone, no
    stream, no cluster queries or presence, nothing to close."""

    ready = True
    knows_peers = True
    logs_recovery = False
    cluster = None
    presence = None
    recovery = None

    def await_rooms(self, namespace: str, rooms: Iterable[Any], timeout: float) -> bool:
        return True  # everything is delivered here

    def follow_waits_deferred(self) -> AbstractContextManager[None]:
        return nullcontext()

    def stats(self) -> dict[str, int | float]:
        return {}

    def new_redis_client(self) -> Any:
        return None

    def close(self, timeout: float = 2.0) -> None:
        pass


_SINGLE_NODE = SingleNode()


def bus_features(manager: Any) -> BusFeatures:
    """The features of ``manager``: the manager itself when it is a cluster
    bus, else the single-node answers."""
    if isinstance(manager, ClusterManager):
        return manager.features
    return _SINGLE_NODE
