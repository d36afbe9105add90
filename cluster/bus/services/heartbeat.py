"""Who is in the cluster: heartbeats out, heartbeats and goodbyes in.

Each node publishes a heartbeat every ``heartbeat_interval`` seconds and a
goodbye when it closes; :class:`Heartbeat` also runs the other periodic
chores of a node's bus (ack expiry, following the backend's topology) in
the same task. A node silent for ``node_timeout`` seconds counts as gone,
but only while this node is subscribed itself: during our own outage
everyone is silent, and the registry is frozen instead.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cluster.bus.clock import ClockWatch
from cluster.bus.publisher import Publisher, check_backend
from cluster.bus.runtime import Runtime
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.transport import Subscription, Transport

NodeEvent = Callable[[str], None]


class Heartbeat:
    """The node registry's inputs and the bus's periodic task.

    :param chores: called on every tick (about four times a second), e.g.
        the expiry of unanswered acks.
    :param clock: measured against the bus server's clock at every beat
        (None: not watched).
    """

    def __init__(self, nodes: NodeRegistry, publisher: Publisher, transport: Transport,
                 subscription: Subscription, runtime: Runtime, logger: logging.Logger, *,
                 host_id: str, node_name: str, interval: float,
                 chores: Callable[[], None], clock: ClockWatch | None = None) -> None:
        self.nodes = nodes
        self.publisher = publisher
        self.transport = transport
        self.subscription = subscription
        self.runtime = runtime
        self.logger = logger
        self.host_id = host_id
        self.node_name = node_name
        self.interval = interval
        self.chores = chores
        self.clock = clock
        #: this node's HTTP address, sent in every heartbeat once set (other
        #: nodes forward a session's requests there, see
        #: :mod:`cluster.node.forwarding`); None: heartbeats carry none
        self.url: str | None = None
        self._joined: list[Callable[[], None]] = []
        self._gone: list[NodeEvent] = []

    def on_joined(self, callback: Callable[[], None]) -> None:
        """``callback()`` when a node is heard of for the first time."""
        self._joined.append(callback)

    def on_gone(self, callback: NodeEvent) -> None:
        """``callback(host_id)`` when a node said goodbye or went silent."""
        self._gone.append(callback)

    # -- messages in ----------------------------------------------------------
    def heard(self, message: dict[str, Any]) -> None:
        """A heartbeat of another node."""
        host = message["host_id"]
        name = str(message.get("name", host))
        url = message.get("url")
        # a sealed bus message, but still only an address is taken from it
        if not (isinstance(url, str) and len(url) <= 256
                and url.startswith(("http://", "https://"))):
            url = None
        if self.nodes.seen(host, name, url):
            self.logger.info("Cluster node %s joined", name)
            for callback in self._joined:
                callback()

    def goodbye(self, message: dict[str, Any]) -> None:
        """Another node is closing."""
        host = message["host_id"]
        if self.nodes.remove(host):
            self._node_gone(host)

    def _node_gone(self, host_id: str) -> None:
        self.logger.warning("Cluster node %s left", self.nodes.name_of(host_id))
        for callback in self._gone:
            callback(host_id)

    # -- messages out -----------------------------------------------------------
    def say_goodbye(self) -> None:
        self.publisher.publish({"method": "bye", "host_id": self.host_id}, volatile=True)

    def run(self) -> None:
        """The periodic task: returns once the subscription is closed."""
        next_beat = 0.0
        while not self.subscription.closed:
            try:
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.interval
                    check_backend(self.transport, self.logger)
                    if self.clock is not None:
                        self.clock.measure(self.transport.server_time)
                    beat = {"method": "heartbeat", "host_id": self.host_id,
                            "name": self.node_name}
                    if self.url is not None:
                        beat["url"] = self.url
                    self.publisher.publish(beat, volatile=True)
                self.chores()
                if self.subscription.subscribed:
                    for host_id in self.nodes.expire():
                        self._node_gone(host_id)
            except Exception:
                self.logger.exception("Cluster bus ticker error")
            self.runtime.sleep(min(0.25, self.interval))
