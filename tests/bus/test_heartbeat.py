"""Heartbeat: nodes join on their first heartbeat and leave on goodbye or
silence; the periodic task publishes, checks and runs its chores."""
from __future__ import annotations

import logging
import time

from cluster.bus.codec import Codec
from cluster.bus.publisher import Publisher
from cluster.bus.runtime import Runtime
from cluster.bus.services.heartbeat import Heartbeat
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.settings import BusSettings
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription
from tests.bus.loopback import wait_for
from tests.bus.test_publisher import Recorder

LOG = logging.getLogger("test")


def heartbeat(node_timeout: float = 3.0) -> tuple[Heartbeat, Recorder, list[str], list[int]]:
    transport, stats, runtime = Recorder(), BusStats(), Runtime()
    nodes = NodeRegistry("me", "me", node_timeout)
    publisher = Publisher(transport, Codec(), stats, runtime, LOG, BusSettings(),
                          host_id="me", write_only=False, expected_peers=lambda: 1)
    sub = Subscription(stats, nodes, runtime, LOG, node_timeout=node_timeout,
                       max_backoff=0.05, publishing=lambda: True)
    chores: list[int] = []
    beat = Heartbeat(nodes, publisher, transport, sub, runtime, LOG, host_id="me",
                     node_name="me", interval=0.05, chores=lambda: chores.append(1))
    events: list[str] = []
    beat.on_joined(lambda: events.append("joined"))
    beat.on_gone(lambda host: events.append(f"gone:{host}"))
    return beat, transport, events, chores


def test_a_node_joins_once_and_leaves_on_goodbye() -> None:
    beat, _, events, _ = heartbeat()
    beat.heard({"host_id": "n2", "name": "node-2"})
    beat.heard({"host_id": "n2", "name": "node-2"})
    assert events == ["joined"] and "n2" in beat.nodes.ids()
    beat.goodbye({"host_id": "n2"})
    beat.goodbye({"host_id": "n2"})  # twice: told once
    assert events == ["joined", "gone:n2"] and "n2" not in beat.nodes.ids()


def test_the_task_beats_checks_runs_chores_and_expires_silent_nodes() -> None:
    beat, transport, events, chores = heartbeat(node_timeout=0.2)
    beat.subscription.up()
    beat.heard({"host_id": "n2", "name": "node-2"})
    beat.publisher.start()
    beat.publisher.runtime.spawn(beat.run)
    try:
        wait_for(lambda: len(transport.sent) >= 2 and transport.checks >= 2 and chores)
        wait_for(lambda: "gone:n2" in events, timeout=3)  # n2 fell silent
    finally:
        beat.subscription.closed = True
        beat.publisher.close(1)


def test_silent_nodes_are_kept_while_we_are_not_subscribed() -> None:
    beat, _, events, chores = heartbeat(node_timeout=0.05)
    beat.heard({"host_id": "n2", "name": "node-2"})
    beat.subscription.up()
    beat.subscription.lost(ConnectionError("our own outage"))  # freezes the registry
    start = time.monotonic()
    beat.publisher.runtime.spawn(beat.run)
    try:
        # the task has run its expiry check several times, well past n2's timeout
        wait_for(lambda: len(chores) >= 4 and time.monotonic() - start > 0.15)
        assert "gone:n2" not in events and "n2" in beat.nodes.ids()
    finally:
        beat.subscription.closed = True
        beat.publisher.close(1)
