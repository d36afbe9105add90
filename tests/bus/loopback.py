"""An in-memory bus backend for unit tests of the manager logic.

It moves the same bytes a real backend would (sealed JSON), so the codec,
the outbox and the listener all run; only the network is missing. ``down``
makes every publish fail, as an outage would.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import socketio

from cluster.bus.manager import ClusterManager
from cluster.bus.transport import Subscription, Transport


class LoopbackHub:
    def __init__(self) -> None:
        self.subscribers: list[LoopbackTransport] = []
        self.managers: list[ClusterManager] = []
        self.down = False
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def inject(self, raw: Any) -> None:
        for sub in list(self.subscribers):
            sub.inbox.put(raw)


class LoopbackTransport(Transport):
    name = "loopback"

    def __init__(self, hub: LoopbackHub) -> None:
        self.hub = hub
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.batches: list[int] = []

    def connect(self) -> None:
        if self.hub.down:
            raise ConnectionError("loopback bus is down")

    def send(self, payloads: list[bytes]) -> None:
        if self.hub.down:
            raise ConnectionError("loopback bus is down")
        with self.hub.lock:
            self.batches.append(len(payloads))
            self.hub.sent.extend(payloads)
            for payload in payloads:
                self.hub.inject(payload)

    def subscriber_count(self) -> int | None:
        return len(self.hub.subscribers)

    def listen(self, subscription: Subscription) -> Iterator[Any]:
        self.hub.subscribers.append(self)
        subscription.up()
        while not subscription.closed:
            try:
                yield self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue


def make_node(hub: LoopbackHub, **kwargs: Any) -> tuple[Any, ClusterManager]:
    """A threading-mode server whose sockets are recorded, not networked."""
    kwargs.setdefault("heartbeat_interval", 0.2)
    manager = ClusterManager(LoopbackTransport(hub), **kwargs)
    hub.managers.append(manager)
    server = socketio.Server(client_manager=manager, async_mode="threading")
    server.sent = []
    server._send_eio_packet = lambda eio_sid, pkt: server.sent.append(
        (eio_sid, pkt.data))
    server._send_packet = lambda eio_sid, pkt: server.sent.append(
        (eio_sid, pkt.encode()))
    manager.initialize()
    return server, manager


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy; return its value or fail the test."""
    import time

    import pytest
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)
