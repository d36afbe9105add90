"""Publisher: serialize at the caller, seal in order, one retry policy."""
from __future__ import annotations

import logging
import threading

import pytest

from cluster.bus.codec import Codec
from cluster.bus.errors import BusPublishError, BusSerializationError
from cluster.bus.publisher import Publisher
from cluster.bus.runtime import Runtime
from cluster.bus.settings import BusSettings
from cluster.bus.stats import BusStats
from cluster.bus.transport import Transport
from tests.bus.loopback import wait_for

SECRET = "s" * 32


class Recorder(Transport):
    """Records what is sent; ``down`` fails every attempt."""

    def __init__(self, subscribers: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.logged: list[bool] = []
        self.down = False
        self.connects = 0
        self.subscribers = subscribers
        self.checks = 0

    def connect(self) -> None:
        self.connects += 1
        if self.down:
            raise ConnectionError("down")

    def send(self, payloads: list[bytes]) -> None:
        if self.down:
            raise ConnectionError("down")
        self.sent.extend(payloads)

    def send_logged(self, payloads: list[bytes], logged: list[bool]) -> list[str | None]:
        self.send(payloads)
        self.logged.extend(logged)
        return [f"{i}-0" if log else None for i, log in enumerate(logged)]

    def subscriber_count(self) -> int | None:
        return self.subscribers

    def check(self) -> None:
        self.checks += 1


def publisher(transport: Transport, *, write_only: bool = False, **settings: object
              ) -> tuple[Publisher, Codec, BusStats]:
    codec, stats = Codec(SECRET), BusStats()
    pub = Publisher(transport, codec, stats, Runtime(), logging.getLogger("test"),
                    BusSettings(**settings), host_id="h1",  # type: ignore[arg-type]
                    write_only=write_only, expected_peers=lambda: 2)
    return pub, codec, stats


def emit(n: int = 0) -> dict:
    return {"method": "emit", "event": "e", "data": [n], "host_id": "h1"}


def opened(codec: Codec, raw: bytes) -> int:
    """The number an :func:`emit` carried."""
    return int(codec.open(raw)[0]["data"][0])


def test_a_node_queues_and_sends_sealed_messages_in_order() -> None:
    transport = Recorder()
    pub, codec, stats = publisher(transport, max_backoff=0.05)
    try:
        for i in range(20):
            assert pub.publish(emit(i))
        assert pub.flush(5)
        assert [opened(codec, raw) for raw in transport.sent] == list(range(20))
        assert pub.healthy and pub.buffered == 0 and stats.get("published") == 20
    finally:
        pub.close(1)


def test_logged_bodies_go_through_the_logging_send() -> None:
    transport = Recorder()
    pub, codec, _ = publisher(transport)
    try:
        body = pub.dumps(emit(1))
        assert pub.publish(body=body, logged=True)
        assert pub.publish({"method": "heartbeat", "host_id": "h1"}, volatile=True)
        wait_for(lambda: len(transport.sent) == 2)
        assert transport.logged[0] is True
    finally:
        pub.close(1)


def test_an_unserializable_message_raises_at_the_caller_and_nothing_is_queued() -> None:
    transport = Recorder()
    pub, _, _ = publisher(transport)
    with pytest.raises(BusSerializationError):
        pub.publish({"method": "emit", "event": "e", "data": [object()]})
    assert pub.buffered == 0 and not pub.started


def test_write_only_sends_before_returning_and_follows_the_topology() -> None:
    transport = Recorder()
    pub, codec, _ = publisher(transport, write_only=True)
    pub.publish(emit(1))
    assert [opened(codec, raw) for raw in transport.sent] == [1]
    assert transport.checks == 1  # the heartbeat's chore, without a heartbeat


def test_write_only_gives_up_after_publish_timeout_with_the_fix() -> None:
    transport = Recorder()
    transport.down = True
    pub, _, stats = publisher(transport, write_only=True, publish_timeout=0.3,
                              max_backoff=0.05)
    with pytest.raises(BusPublishError, match="reachable from this process"):
        pub.publish(emit())
    assert stats.get("publish_errors") >= 2  # retried with backoff, not once


def test_write_only_threads_share_one_sequence_in_order() -> None:
    transport = Recorder()
    pub, codec, _ = publisher(transport, write_only=True)
    threads = [threading.Thread(target=lambda: [
        pub.publish(emit()) for _ in range(50)])
        for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # each seal numbers the message and a receiving codec drops a number
    # lower than one it saw from the same source: all 200 open only if they
    # were sent in the order they were sealed
    receiver = Codec(SECRET)
    assert len([receiver.open(raw)[0] for raw in transport.sent]) == 200


def test_after_an_outage_the_buffer_waits_for_the_known_peers() -> None:
    transport = Recorder(subscribers=1)  # 2 expected, one resubscribed so far
    pub, _, _ = publisher(transport, resume_wait=0.3)
    waited = threading.Event()

    def wait() -> None:
        pub._wait_for_peers()  # noqa: SLF001 - the outbox's before_resume hook
        waited.set()

    threading.Thread(target=wait, daemon=True).start()
    assert not waited.wait(0.1)  # still holding
    assert waited.wait(2)  # ... but never longer than resume_wait
    transport.subscribers = 2
    quick = threading.Event()
    threading.Thread(target=lambda: (pub._wait_for_peers(), quick.set()),  # noqa: SLF001
                     daemon=True).start()
    assert quick.wait(0.2)
