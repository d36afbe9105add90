"""Catch-up after a subscription outage (cluster.bus.catch_up), with real
processes: node A talks to Redis directly, node B through a fault proxy
that cuts its connections (its subscription among them) and refuses new
ones for a while; a client on A emits to a room whose member is on B.

Connection state recovery is on (the fault scenarios' app)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from cluster import Client
from tests.faults.fault_proxy import FaultProxy
from tests.harness.waiting import wait_for

APP = "tests.faults.fault_app:socketio"
ROOM = "catch-up-room"
STREAM = "{flask-socketio}:recovery"


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    kwargs = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    with FaultProxy(kwargs["host"], kwargs["port"]) as started:
        yield started


class Member:
    """A recovery-aware client in ROOM that records every ``msg`` and every return."""

    def __init__(self, factory: Any, url: str) -> None:
        self.client = factory(cls=Client, reconnection_delay=0.2, reconnection_delay_max=1.0,
                              randomization_factor=0.1)
        self.got: list[int] = []
        self.returns: list[bool] = []
        self.client.on("msg", lambda message: self.got.append(message["seq"]))
        self.client.on("connect", self._connected)
        self.connects = 0
        self.client.connect(url, auth={"name": "member"}, transports=["websocket"],
                            wait_timeout=10)
        self.client.call("join", ROOM, timeout=10)

    def _connected(self) -> None:
        self.connects += 1
        if self.connects > 1:
            self.returns.append(bool(self.client.recovered))


def bus_figures(node: Any) -> dict[str, float]:
    figures = {}
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("socketio_bus{kind="):
            kind, value = line[len('socketio_bus{kind="'):].split('"} ')
            figures[kind] = float(value)
    return figures


def readyz(node: Any, status: int, what: str) -> None:
    wait_for(lambda: node.http_status("/readyz", timeout=0.5) == status, timeout=30, what=what)


def start(node_factory: Any, sio_client_factory: Any, proxy: FaultProxy, redis_url: str
          ) -> tuple[Any, Any, Member, Any]:
    node_a = node_factory(app=APP, message_queue=redis_url)[0]
    node_b = node_factory(app=APP, message_queue=proxy.url)[0]
    member = Member(sio_client_factory, node_b.url)
    sender = sio_client_factory()
    sender.connect(node_a.url, auth={"name": "sender"}, transports=["websocket"],
                   wait_timeout=10)
    return node_a, node_b, member, sender


def say(sender: Any, seqs: range) -> None:
    for seq in seqs:  # each acked by node A once published (or buffered)
        sender.call("say", {"room": ROOM, "sender": "s", "seq": seq}, timeout=10)


def cut(proxy: FaultProxy, node_b: Any) -> None:
    """Reset node B's Redis connections and refuse new ones: its
    subscription is down until :meth:`FaultProxy.refuse` ``(False)``."""
    proxy.refuse()
    assert proxy.reset_all() >= 1
    readyz(node_b, 503, "node B to notice it lost the bus")


def test_member_gets_what_other_nodes_sent_while_its_subscription_was_down(
        node_factory: Any, sio_client_factory: Any, proxy: FaultProxy, redis_url: str) -> None:
    _, node_b, member, sender = start(node_factory, sio_client_factory, proxy, redis_url)
    say(sender, range(1, 6))
    wait_for(lambda: len(member.got) >= 5, what="the first messages on node B")
    cut(proxy, node_b)
    say(sender, range(6, 21))  # node B's subscription is down meanwhile
    proxy.refuse(False)
    readyz(node_b, 200, "node B back on the bus")
    say(sender, range(21, 26))
    wait_for(lambda: len(member.got) >= 25, timeout=15,
             what=f"25 messages on node B (got {member.got})")
    time.sleep(0.5)  # a duplicate would arrive right behind the last one
    assert member.got == list(range(1, 26))  # all, once, in order
    assert member.connects == 1  # never disconnected: nothing it had to recover by itself
    figures = bus_figures(node_b)
    assert figures["catch_ups"] >= 1 and figures["caught_up"] >= 15, figures
    assert figures["catch_up_impossible"] == 0, figures


def test_catch_up_past_a_trimmed_stream_sends_clients_to_recover(
        node_factory: Any, sio_client_factory: Any, proxy: FaultProxy, redis_url: str) -> None:
    _, node_b, member, sender = start(node_factory, sio_client_factory, proxy, redis_url)
    say(sender, range(1, 4))
    wait_for(lambda: len(member.got) >= 3, what="the first messages on node B")
    cut(proxy, node_b)
    say(sender, range(4, 9))
    admin = redis.Redis.from_url(redis_url)
    try:
        # an ack means queued on node A: wait until all 8 are in the stream
        wait_for(lambda: admin.xlen(STREAM) >= 8, what="node A's emits in the stream")
        # what node B missed is gone from the stream: no exact catch-up
        assert admin.xtrim(STREAM, maxlen=0, approximate=False) >= 5
    finally:
        admin.close()
    proxy.refuse(False)
    readyz(node_b, 200, "node B back on the bus")
    # the explicit signal: node B closed the member's connection, and its own
    # recovery says its history is gone (it must rejoin its rooms)
    wait_for(lambda: member.returns, timeout=15, what="the member to be sent to reconnect")
    assert member.returns == [False]
    assert member.got == [1, 2, 3]
    figures = bus_figures(node_b)
    assert figures["catch_up_impossible"] >= 1, figures
    assert figures["catch_up_disconnects"] >= 1, figures
    assert "cannot catch up exactly" in node_b.log_text()
