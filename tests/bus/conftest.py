"""Fixtures of the cluster-bus tests: two bus nodes, clients that record.
Everything on 127.0.0.1, stopped by PID."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
import socketio

BUS_APP = "tests.apps.bus_app:socketio"


class Recorder:
    """A python-socketio client that keeps every event it receives."""

    def __init__(self, client: socketio.Client, url: str) -> None:
        self.client = client
        self.url = url
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.seen: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.answers: dict[str, Any] = {}

        @client.on("*")
        def any_event(event: str, *args: Any) -> Any:
            item = (event, args[0] if len(args) == 1 else list(args))
            with self.lock:
                self.seen.append(item)
            self.events.put(item)
            return self.answers.get(event)

    @property
    def sid(self) -> str:
        return self.client.get_sid()

    def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return self.client.call(event, data, timeout=timeout)

    def got(self, event: str) -> list[Any]:
        with self.lock:
            return [data for name, data in self.seen if name == event]

    def wait_event(self, event: str, count: int = 1,
                   timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.got(event)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{event!r}: {len(self.got(event))}/{count} received "
                    f"within {timeout} s")
            time.sleep(0.01)
        return self.got(event)


@pytest.fixture
def connect(sio_client_factory: Any) -> Any:
    """``connect(node) -> Recorder`` over WebSocket."""
    def factory(node: Any, **kwargs: Any) -> Recorder:
        client = sio_client_factory(reconnection=False)
        recorder = Recorder(client, node.url)
        client.connect(node.url, transports=["websocket"], wait_timeout=10,
                       **kwargs)
        return recorder
    return factory


def wait_nodes(recorder: Recorder, count: int, timeout: float = 8.0) -> None:
    """Until the node behind ``recorder`` hears ``count`` live nodes."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = recorder.call("query", {"op": "live_nodes"})["result"]
        if len(nodes) >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(nodes)} live nodes: {nodes}")
        time.sleep(0.1)


@pytest.fixture
def bus_nodes(node_factory: Any) -> Any:
    """``bus_nodes(count=2, message_queue=..., extra_args=None)``: bus app
    nodes that already see each other."""
    def factory(count: int = 2, **kwargs: Any) -> list[Any]:
        return node_factory(app=BUS_APP, count=count, **kwargs)
    return factory


# the Redis Cluster fixture (``redis_cluster``) is in tests/harness/redis_cluster.py
