"""The bus over several shards of a real 3-master Redis Cluster: one
subscriber connection per primary read as one, publishes grouped per
primary, and what each does when a primary fails."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis

from cluster.bus.backends.redis_connection import RedisConnector
from cluster.bus.backends.redis_lanes import Lanes
from cluster.bus.backends.redis_pushes import PushConnection
from cluster.bus.backends.redis_shards import (
    PING_AFTER,
    PONG_WITHIN,
    ShardedPushes,
    ShardMap,
    ShardPublisher,
)
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.channels import room_channel
from cluster.bus.runtime import Runtime
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription
from cluster.devtools.processes import free_port

LANES = Lanes("shards-test", 6)


def _connector(url: str) -> RedisConnector:
    return RedisConnector(url, {}, redis_cluster=False, channel="shards-test")


def _drain(pushes: ShardedPushes, kind: bytes, count: int,
           timeout: float = 10.0) -> list[tuple[bytes, bytes, Any]]:
    got: list[tuple[bytes, bytes, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)}/{count} {kind!r} within {timeout} s"
        message = pushes.get_message(timeout=0.5)
        if message is not None and message[0] == kind:
            got.append(message)
    return got


def test_every_lane_is_read_through_one_connection_per_primary(redis_cluster_url: str) -> None:
    connector = _connector(redis_cluster_url)
    shards = ShardMap.resolve(LANES, connector.owners)
    assert len(shards.addresses()) == 3
    pushes = ShardedPushes(shards, lambda a: PushConnection(connector.client_at(*a), True))
    publisher = ShardPublisher(LANES, connector.owners, connector.client_at)
    try:
        rooms = [room_channel(LANES, "/", f"r{i}") for i in range(30)]
        assert {LANES.lane_of(room) for room in rooms} == set(range(1, 7))
        pushes.subscribe(LANES.channel, *rooms)  # one command per lane
        assert len(_drain(pushes, b"ssubscribe", 31)) == 31
        payloads = [f"m{i}".encode() for i in range(60)]
        channels = [rooms[i % 30] for i in range(60)]
        assert publisher.send(payloads, channels) == [1] * 60  # one subscriber each
        got = _drain(pushes, b"smessage", 60)
        assert sorted(m[2] for m in got) == sorted(payloads)
        # each channel's messages in publish order
        for room in rooms:
            mine = [m[2] for m in got if m[1] == room.encode()]
            assert mine == [p for p, c in zip(payloads, channels, strict=True) if c == room]
        # an unsubscription asked for is answered, not taken for a moved slot
        pushes.unsubscribe(rooms[0])
        assert _drain(pushes, b"sunsubscribe", 1)[0][1] == rooms[0].encode()
    finally:
        pushes.close()
        publisher.close()


def test_a_primary_that_cannot_be_reached_holds_back_only_its_own_messages(
        redis_cluster_url: str) -> None:
    connector = _connector(redis_cluster_url)
    dead = ("127.0.0.1", free_port())  # nothing listens there
    real = ShardMap.resolve(LANES, connector.owners)
    lost = real.owner(LANES.prefixes[0])

    def owners(keys: list[str]) -> list[tuple[str, int]]:
        return [dead if address == lost else address for address in connector.owners(keys)]

    publisher = ShardPublisher(LANES, owners, connector.client_at)
    try:
        channels = [f"{prefix}:room:x" for prefix in LANES.prefixes]
        replies = publisher.send([b"p"] * 6, channels)
        for channel, reply in zip(channels, replies, strict=True):
            if real.owner(channel) == lost:
                assert isinstance(reply, redis.exceptions.ConnectionError)
            else:
                assert reply == 0  # published (no subscriber)
        # every primary unreachable: the bus is down, said by raising
        with pytest.raises(redis.exceptions.ConnectionError):
            publisher.send([b"p"], [LANES.prefixes[0] + ":room:x"])
    finally:
        publisher.close()


class _SilentConnection:
    """A subscriber connection that never receives anything."""

    def __init__(self) -> None:
        self.received_at = time.monotonic()
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1

    def get_message(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


def test_a_primary_that_answers_no_ping_breaks_the_subscription(
        redis_cluster_url: str) -> None:
    connector = _connector(redis_cluster_url)
    silent = _SilentConnection()
    pushes = ShardedPushes(ShardMap.resolve(LANES, connector.owners),
                           lambda address: silent)  # type: ignore[arg-type,return-value]
    start = silent.received_at
    pushes._check_health(start + PING_AFTER / 2)
    assert silent.pings == 0  # not silent for long
    pushes._check_health(start + PING_AFTER + 0.1)
    assert silent.pings == 1
    pushes._check_health(start + PING_AFTER + 1)
    assert silent.pings == 1  # one PING at a time
    silent.received_at = start + PING_AFTER + 1.5  # the PONG came
    pushes._check_health(start + PING_AFTER + 2)
    pushes._check_health(start + 2 * PING_AFTER + 2)
    assert silent.pings == 2
    with pytest.raises(redis.exceptions.ConnectionError, match="PING"):
        pushes._check_health(start + 2 * PING_AFTER + 2 + PONG_WITHIN + 0.1)


def test_a_subscription_over_lanes_asks_the_seeds_once(redis_cluster_url: str) -> None:
    """Each (re)subscription resolves where the lanes are in one question to
    the seeds, for every lane and the common channel together."""
    connector = RedisConnector(redis_cluster_url, {}, redis_cluster=False,
                               channel=LANES.channel)
    asked: list[list[str]] = []
    owners = connector.owners

    def counted(keys: list[str]) -> list[tuple[str, int]]:
        asked.append(keys)
        return owners(keys)

    connector.owners = counted  # type: ignore[method-assign]
    transport = RedisTransport(connector, None, LANES.count)
    subscription = Subscription(BusStats(), NodeRegistry("me", "me", 3.0), Runtime(),
                                logging.getLogger("test"), node_timeout=60.0,
                                max_backoff=0.1, publishing=lambda: True)
    subscribed: list[int] = []
    subscription.on_subscribed(lambda: subscribed.append(len(asked)))
    published = threading.Thread(target=_publish_when, daemon=True,
                                 args=(subscribed, transport, LANES.channel))
    published.start()
    try:
        for payload in transport.listen(subscription):
            assert payload == b"hello"
            break
    finally:
        subscription.closed = True
        transport.close()
    assert subscribed == [1]  # subscribed after one question
    assert asked[0] == [LANES.common, *LANES.prefixes]


def _publish_when(subscribed: list[int], transport: Any, channel: str) -> None:
    deadline = time.monotonic() + 10
    while not subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    transport.send([b"hello"])
