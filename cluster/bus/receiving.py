"""The receiving half of a bus manager: listen, check, dispatch.

Every raw message goes through :meth:`ReceivingMixin._dispatch`, which never
raises: the codec either returns a checked message or says why it was
dropped (counted in ``stats()`` and logged at most every 10 s, since a flood
of forged messages must not flood the log too), and a message that fails
while being applied is counted in ``handler_errors``. The listener therefore
survives any single bad message and any backend failure.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cluster.recovery.stream import split_published
from cluster.bus.codec import CLUSTER_METHODS, Codec, Dropped
from cluster.bus.runtime import Backoff, Runtime

if TYPE_CHECKING:  # pragma: no cover
    from cluster.bus.nodes import NodeRegistry
    from cluster.bus.outbox import Outbox
    from cluster.bus.presence import Presence
    from cluster.bus.stats import BusStats
    from cluster.bus.view import ClusterView


class ReceivingMixin:
    """Mixed into :class:`~.manager.ClusterManager`; uses its state."""

    if TYPE_CHECKING:  # provided by ClusterManager / PubSubManager
        host_id: str
        max_backoff: float
        node_timeout: float
        cluster: ClusterView
        presence: Presence
        _closed: bool
        _subscribed: bool
        _ever_subscribed: bool
        _subscribed_at: float
        _first_subscribed_at: float
        _last_received: float
        _last_drop_log: float
        _codec: Codec
        _stats: BusStats
        _nodes: NodeRegistry
        _outbox: Outbox | None
        _runtime: Runtime

        def _get_logger(self) -> Any: ...
        def _listen(self) -> Iterator[Any]: ...
        def _handle_emit(self, message: dict[str, Any]) -> None: ...
        def _deliver_own_logged(self, message: dict[str, Any]) -> None: ...
        def _emitters_stop_waiting(self) -> None: ...
        def _handle_callback(self, message: dict[str, Any]) -> None: ...
        def _handle_disconnect(self, message: dict[str, Any]) -> None: ...
        def _handle_enter_room(self, message: dict[str, Any]) -> None: ...
        def _handle_leave_room(self, message: dict[str, Any]) -> None: ...
        def _handle_close_room(self, message: dict[str, Any]) -> None: ...

    #: green-thread (or thread) local: set inside the listener
    _listener_local = threading.local()

    def _in_listener(self) -> bool:
        """Whether the caller runs inside this listener (an ack callback or
        a presence hook it called), which must never wait for the listener."""
        return getattr(self._listener_local, "manager", None) is self

    def _thread(self) -> None:
        self._listener_local.manager = self
        backoff = Backoff(cap=self.max_backoff)
        while not self._closed:
            try:
                for raw in self._listen():
                    self._dispatch(raw)
                    if self._closed:
                        return
            except Exception:  # a listener must outlive any single failure
                self._get_logger().exception("Cluster bus listener failed")
                self._on_unsubscribed()
                self._runtime.sleep(backoff.next())

    def _dispatch(self, raw: Any) -> None:
        """Check and apply one raw bus message; never raises."""
        self._stats.incr("received")
        self._last_received = time.monotonic()
        offset, raw = split_published(raw)
        try:
            message, sent_ms = self._codec.open(raw, offset=offset)
        except Dropped as drop:
            self._stats.incr(drop.reason)
            self._log_drop(drop)
            return
        if offset is not None and message.get("method") == "emit":
            message["offset"] = offset
        method, host = message["method"], message.get("host_id")
        try:
            if method == "callback":
                if host == self.host_id:
                    self._handle_callback(message)
                return
            if host == self.host_id:
                # our own message coming back: a logged emit is delivered
                # to this node's clients now, in stream order
                if method == "emit" and "lid" in message:
                    self._deliver_own_logged(message)
                return
            if sent_ms is not None:
                self._stats.record_lag(time.time() - sent_ms / 1000)
            if method in CLUSTER_METHODS:
                self._handle_cluster(message)
            elif method == "emit":
                self._handle_emit(message)
            elif method == "disconnect":
                self._handle_disconnect(message)
            elif method == "enter_room":
                self._handle_enter_room(message)
            elif method == "leave_room":
                self._handle_leave_room(message)
            elif method == "close_room":
                self._handle_close_room(message)
        except Exception:
            self._stats.incr("handler_errors")
            self._get_logger().exception("Error applying bus message %r",
                                         method)

    def _handle_cluster(self, message: dict[str, Any]) -> None:
        method, host = message["method"], message["host_id"]
        if method == "heartbeat":
            if self._nodes.seen(host, str(message.get("name", host))):
                self._get_logger().info("Cluster node %s joined",
                                        message.get("name", host))
                self.presence._node_joined()
        elif method == "bye":
            if self._nodes.remove(host):
                self._node_gone(host)
        elif method == "request":
            self.cluster._handle_request(message)
        elif method == "response":
            self.cluster._handle_response(message)
        elif method == "presence":
            self.presence._handle_message(message)

    def _node_gone(self, host_id: str) -> None:
        self._get_logger().warning("Cluster node %s left",
                                   self._nodes.name_of(host_id))
        self.cluster._node_gone(host_id)
        self.presence._node_gone(host_id)

    def _log_drop(self, drop: Dropped) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 10:  # rate limited: could be a flood
            self._last_drop_log = now
            self._get_logger().warning(
                "Dropped a bus message (%s: %s). If this is a peer of ours, "
                "check that every node and emitter uses the same signing "
                "secret.", drop.reason, drop)

    # -- listener state, reported by the backends ----------------------------
    def _on_subscribed(self) -> None:
        if self._ever_subscribed and not self._subscribed:
            self._stats.incr("reconnects")
            self._get_logger().warning("Cluster bus subscription restored")
        if not self._ever_subscribed:
            self._first_subscribed_at = time.monotonic()
        self._ever_subscribed = True
        self._subscribed = True
        self._subscribed_at = self._last_received = time.monotonic()
        self._nodes.thaw()
        self.presence._on_subscribed()

    def _on_resubscribed(self, reason: str) -> None:
        """The driver re-subscribed by itself after losing the connection.

        redis-py does this under its pubsub object: it reconnects and
        re-subscribes without telling anyone. Messages published in between
        are lost to this node, exactly as in an outage we noticed, so it is
        reported the same way: logged as lost and restored, counted in
        ``reconnects``, the node registry and presence resynchronised.
        """
        self._on_unsubscribed(ConnectionError(reason))
        self._on_subscribed()

    def _on_unsubscribed(self, exc: BaseException | None = None) -> None:
        if self._subscribed:
            self._get_logger().error(
                "Cluster bus subscription lost (%s); serving local clients "
                "only until it returns", exc or "listener stopped")
        self._subscribed = False
        self._nodes.freeze()
        self._emitters_stop_waiting()

    def _listener_is_deaf(self) -> bool:
        """Subscribed, publishing fine, yet not even our own heartbeats
        come back: the subscription is silently broken."""
        now = time.monotonic()
        return (self._outbox is not None and self._outbox.healthy
                and now - self._last_received > self.node_timeout
                and now - self._subscribed_at > self.node_timeout)
