"""Subscription: the listener's state as a transport reports it."""
from __future__ import annotations

import logging

from cluster.bus.runtime import Runtime
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription, Transport


def subscription(publishing: bool = True, node_timeout: float = 0.0) -> Subscription:
    return Subscription(BusStats(), NodeRegistry("me", "me", 3.0), Runtime(),
                        logging.getLogger("test"), node_timeout=node_timeout,
                        max_backoff=0.1, publishing=lambda: publishing)


def test_a_lost_and_restored_subscription_is_counted_and_told() -> None:
    sub = subscription()
    told: list[str] = []
    sub.on_subscribed(lambda: told.append("up"))
    sub.on_lost(lambda: told.append("lost"))
    sub.up()
    assert sub.subscribed and sub.stats.get("reconnects") == 0  # the first time
    sub.lost(ConnectionError("gone"))
    assert not sub.subscribed
    sub.up()
    assert sub.stats.get("reconnects") == 1
    assert told == ["up", "lost", "up"] and sub.subscribed


def test_a_silent_subscription_is_deaf_only_while_publishing_works() -> None:
    sub = subscription(publishing=True)
    sub.up()
    assert sub.deaf()  # node_timeout 0: not even our own heartbeats came back
    assert not subscription(publishing=False).deaf()
    patient = subscription(node_timeout=60)
    patient.up()
    assert not patient.deaf()


def test_peers_are_known_only_after_a_heartbeat_interval() -> None:
    sub = subscription()
    assert not sub.knows_peers(0.0)  # never subscribed
    sub.up()
    assert sub.knows_peers(0.0) and not sub.knows_peers(60.0)


def test_the_base_transport_logs_nothing_and_sends_logged_as_plain() -> None:
    class Plain(Transport):
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, payloads: list[bytes]) -> None:
            self.sent.extend(payloads)

    plain = Plain()
    assert plain.send_logged([b"a", b"b"], [True, False]) == [None, None]
    assert plain.sent == [b"a", b"b"] and not plain.logs_recovery
    assert plain.recovery is None and plain.subscriber_count() is None


def test_a_failed_listener_retries_until_the_subscription_closes() -> None:
    from cluster.bus.runtime import Backoff

    sub = subscription()
    sub.up()
    assert sub.retry_after(ConnectionError("reset"), Backoff(initial=0.001, cap=0.001))
    assert not sub.subscribed  # reported lost, registry frozen
    sub.closed = True
    assert not sub.retry_after(ConnectionError("reset"), Backoff(initial=0.001, cap=0.001))
