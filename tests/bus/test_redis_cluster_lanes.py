"""Lanes over a real 3-master Redis Cluster (``--redis-partitions``): room
channels spread over every shard, each shard carrying a share of the bus,
a node reading only its rooms' lanes, and a shard failover under traffic."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Literal

import pytest
import redis
from redis.cluster import RedisCluster

from cluster.bus.backends.redis_lanes import Lanes, agreement_key
from cluster.devtools.processes import free_port
from tests.bus.conftest import wait_nodes
from tests.harness.redis_cluster_replicas import ReplicatedCluster

CHANNEL = "flask-socketio"
LANES = ["--redis-partitions", "6"]
#: room names are fixed, so which lane each one takes is too; 300 rooms
#: land 84, 104 and 112 on the three primaries (a hash spreads many rooms
#: evenly, not a few)
ROOMS = [f"room-{i}" for i in range(300)]


@pytest.fixture(autouse=True)
def _lane_count_forgotten(redis_cluster: list[Any]) -> Any:
    """The lane count recorded in the shared cluster is deleted after each
    test (set up first, so torn down after its nodes stopped): a later
    test's nodes with one lane would otherwise refuse to start for 120 s."""
    yield
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        cluster.delete(agreement_key(CHANNEL))
    finally:
        cluster.close()


def _masters(servers: list[Any]) -> list[redis.Redis]:
    return [redis.Redis(port=server.port, socket_timeout=5) for server in servers]


def _spublishes(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_spublish", {}).get("calls", 0))


def test_rooms_spread_over_every_shard_and_each_carries_a_share(
        redis_cluster_url: str, redis_cluster: list[Any], bus_nodes: Any,
        connect: Any) -> None:
    n1, n2 = bus_nodes(2, message_queue=redis_cluster_url, extra_args=LANES)
    sender, member = connect(n1), connect(n2)
    wait_nodes(sender, 2)
    assert member.call("join_many", {"rooms": ROOMS}) == len(ROOMS)
    masters = _masters(redis_cluster)
    lanes = Lanes(CHANNEL, 6)
    # every shard holds some of the rooms' channels, on their lanes' tags
    for master in masters:
        channels = [c.decode() for c in master.pubsub_shardchannels("*:room:*")]
        assert channels, "a shard holds no room channel"
        assert all(lanes.lane_of(c) >= 1 for c in channels)
    before = [_spublishes(m) for m in masters]
    sender.call("relay_many", {"items": [[room, index]
                                         for index, room in enumerate(ROOMS * 2)]})
    got = member.wait_event("relayed", count=len(ROOMS) * 2, timeout=30)
    assert sorted(got) == list(range(len(ROOMS) * 2))
    shares = [_spublishes(m) - b for m, b in zip(masters, before, strict=True)]
    total = sum(shares)
    assert total >= len(ROOMS) * 2
    # issue 25's target: each of 3 shards carries 25-42% of the bus
    assert all(0.25 <= share / total <= 0.42 for share in shares), shares
    # the recorded lane count, in the common channel's slot
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    assert cluster.get(agreement_key(CHANNEL)) == b"6"
    cluster.close()
    for master in masters:
        master.close()


def test_an_emit_right_after_a_join_reaches_the_new_member_and_idle_nodes_read_nothing(
        redis_cluster_url: str, bus_nodes: Any, connect: Any) -> None:
    n1, n2, n3 = bus_nodes(3, message_queue=redis_cluster_url, extra_args=LANES)
    sender, member, idle = connect(n1), connect(n2), connect(n3)
    wait_nodes(sender, 3)
    before = idle.call("stats")["stats"]["received"]
    started = time.monotonic()
    for i in range(40):
        room = f"fresh-{i}"
        member.call("join", {"room": room})
        # no wait between the join's answer and the emit on another node
        sender.call("relay", {"to": room, "payload": i})
    assert sorted(member.wait_event("relayed", count=40, timeout=20)) == list(range(40))
    # one sender's emits to one room keep their order across its lane
    sender.call("relay_many", {"items": [["fresh-7", f"o{i}"] for i in range(100)],
                               "event": "ordered"})
    assert member.wait_event("ordered", count=100) == [f"o{i}" for i in range(100)]
    # the node with no member of those rooms read none of the 140 emits:
    # only what travels on the common channel, the two other nodes'
    # heartbeats (one a second each) and a presence event per new room
    heartbeats = 2 * (time.monotonic() - started + 2)
    assert idle.call("stats")["stats"]["received"] - before <= 40 + heartbeats


def test_a_node_with_another_lane_count_refuses_to_start(
        redis_cluster_url: str, bus_nodes: Any, pytestconfig: Any) -> None:
    bus_nodes(1, message_queue=redis_cluster_url, extra_args=LANES)
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "tests.apps.bus_app:socketio",
         "--port", str(free_port()), "--message-queue", redis_cluster_url,
         "--redis-partitions", "3", "--allow-unsigned-bus"],
        capture_output=True, text=True, timeout=60, cwd=str(pytestconfig.rootpath))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "redis_partitions=3" in done.stderr and "use 6" in done.stderr


def test_lanes_need_redis_cluster_and_no_recovery(redis_url: str,
                                                   redis_cluster_url: str) -> None:
    from cluster.bus import BusConfigurationError, create_manager
    with pytest.raises(BusConfigurationError, match="not on Redis Cluster"):
        create_manager(redis_url, options={"redis_partitions": 4})
    with pytest.raises(BusConfigurationError, match="recovery"):
        create_manager(redis_cluster_url, options={"redis_partitions": 4},
                       recovery_window=60)


@pytest.mark.parametrize("how", ["kill", "graceful"])
def test_a_shard_failover_under_traffic_loses_no_emit_after_the_promotion(
        redis_cluster_with_replicas: ReplicatedCluster, bus_nodes: Any,
        connect: Any, how: Literal["kill", "graceful"]) -> None:
    cluster = redis_cluster_with_replicas
    n1, n2 = bus_nodes(2, message_queue=cluster.url, extra_args=LANES)
    sender, member = connect(n1), connect(n2)
    wait_nodes(sender, 2)
    lanes = Lanes(CHANNEL, 6)
    # a room whose lane is not on the common channel's shard
    common = cluster.shard_of(lanes.common)
    room = next(r for r in ROOMS
                if cluster.shard_of(_room_key(lanes, r)).master.port != common.master.port)
    member.call("join", {"room": room})
    sender.call("relay_many", {"items": [[room, i] for i in range(20)]})
    member.wait_event("relayed", count=20)
    shard = cluster.failover(_room_key(lanes, room), how)
    assert shard.master.port != common.master.port
    # once promoted, the nodes move to the new primary by themselves: a
    # killed primary's connections break, a demoted one unsubscribes them
    # from its slots and answers MOVED; either way they ask the cluster again
    deadline = time.monotonic() + 30
    sent = 20
    while True:
        sender.call("relay", {"to": room, "payload": sent}, timeout=15)
        sent += 1
        if sent - 1 in member.got("relayed"):
            break
        assert time.monotonic() < deadline, "the room's lane never came back"
        time.sleep(0.2)
    first_after = sent
    sender.call("relay_many", {"items": [[room, i]
                                         for i in range(first_after, first_after + 50)]})
    deadline = time.monotonic() + 20
    while not set(range(first_after, first_after + 50)) <= set(member.got("relayed")):
        assert time.monotonic() < deadline, "emits after the failover went missing"
        time.sleep(0.05)
    got = member.got("relayed")
    assert len(got) == len(set(got)), "an emit arrived twice"
    tail = [value for value in got if value >= first_after]
    assert tail == sorted(tail), "emits after the failover arrived out of order"


def _room_key(lanes: Lanes, room: str) -> str:
    from cluster.bus.channels import room_channel
    return room_channel(lanes, "/", room)


def test_an_emitter_with_the_nodes_lane_count_reaches_a_room_and_another_is_refused(
        redis_cluster_url: str, bus_nodes: Any, connect: Any) -> None:
    from tests.harness.fixtures import BUS_SIGNING_SECRET
    from workers import ConfigurationError, Emitter
    (n1,) = bus_nodes(1, message_queue=redis_cluster_url, extra_args=LANES)
    member = connect(n1)
    member.call("join", {"room": "user:42"})
    emitter = Emitter(redis_cluster_url, signing_secret=BUS_SIGNING_SECRET,
                      options={"redis_partitions": 6})
    try:
        for i in range(20):
            emitter.emit("note", i, to="user:42")
        assert member.wait_event("note", count=20) == list(range(20))
    finally:
        emitter.close()
    # one lane (the default): refused as it is made, before any emit is lost
    with pytest.raises(ConfigurationError, match="redis_partitions=1 .* use 6"):
        Emitter(redis_cluster_url, signing_secret=BUS_SIGNING_SECRET)
