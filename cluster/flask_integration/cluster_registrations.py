"""Cluster-wide handlers and presence callbacks an application registers.

``socketio.on_cluster_event`` and ``socketio.on_presence`` may be used at
import time, before the node runner joins the app to a bus, and the bus
manager may be replaced after that (``--message-queue``). The registrations
are therefore kept here and applied to whichever manager is in use, once
per manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cluster.bus.features import BusFeatures
from cluster.exceptions import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


class ClusterRegistrations:
    """``server_side_emit`` handlers and presence callbacks of one extension.

    :param features: returns the features of the bus in use, or ``None``
        before ``init_app``; a registration made while there is one is
        applied at once.
    """

    def __init__(self, features: Callable[[], BusFeatures | None]) -> None:
        self._features = features
        self.handlers: list[tuple[str, Callable[..., Any], str]] = []
        self.presence_callbacks: list[Callable[..., Any]] = []
        # the presence object the callbacks were given to, and which ones
        self._presence: Any = None
        self._given: list[Callable[..., Any]] = []

    def on(self, event: str, namespace: str) -> Callable[[F], F]:
        """Decorator: ``handler`` of ``server_side_emit(event)`` on ``namespace``."""
        def decorator(handler: F) -> F:
            self.add_handler(event, handler, namespace)
            return handler

        return decorator

    def add_handler(self, event: str, handler: Callable[..., Any], namespace: str) -> None:
        self.handlers.append((event, handler, namespace))
        self._apply_if_built()

    def add_presence_callback(self, callback: Callable[..., Any]) -> None:
        self.presence_callbacks.append(callback)
        self._apply_if_built()

    def _apply_if_built(self) -> None:
        features = self._features()
        if features is not None:
            self.apply(features)

    def apply(self, features: BusFeatures) -> None:
        """Register everything on the manager behind ``features`` (idempotent)."""
        view = features.cluster
        if view is not None:
            for event, handler, namespace in self.handlers:
                view.on(event, handler, namespace=namespace)
        presence = features.presence
        if presence is None:
            return
        if presence is not self._presence:
            self._presence, self._given = presence, []
        for callback in self.presence_callbacks:
            if callback not in self._given:
                presence.on(callback)
                self._given.append(callback)


def cluster_view(features: BusFeatures) -> Any:
    """``socketio.cluster``: the cluster-wide queries, or a ConfigurationError."""
    view = features.cluster
    if view is None:
        raise ConfigurationError(
            "socketio.cluster needs a message queue: pass message_queue= to SocketIO() "
            "or --message-queue to the node runner.")
    return view


def presence_of(features: BusFeatures) -> Any:
    """``socketio.presence``: room presence events, or a ConfigurationError."""
    presence = features.presence
    if presence is None:
        raise ConfigurationError(
            "socketio.presence needs a message queue: pass message_queue= to SocketIO() "
            "or --message-queue to the node runner.")
    return presence
