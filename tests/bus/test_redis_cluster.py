"""A real 3-master Redis Cluster: sharded pub/sub between node processes."""
from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from tests.bus.conftest import wait_nodes


def test_nodes_talk_through_sharded_pubsub(redis_cluster, bus_nodes,
                                           connect) -> None:
    seeds = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    n1, n2 = bus_nodes(2, message_queue=f"redis+cluster://{seeds}")
    a, b = connect(n1), connect(n2)
    wait_nodes(a, 2)
    b.call("join", {"room": "r"})
    a.call("relay", {"to": "r", "payload": "sharded"})
    assert b.wait_event("relayed") == ["sharded"]
    assert a.call("query", {"op": "room_members", "args": ["r"]})["result"] \
        == [b.sid]

    # the channel lives on exactly one shard, as a shard channel
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    owner = cluster.get_node_from_key("flask-socketio")
    cluster.close()
    for server in redis_cluster:
        client = redis.Redis(port=server.port)
        shard = dict(client.pubsub_shardnumsub("flask-socketio"))
        classic = dict(client.pubsub_numsub("flask-socketio"))
        client.close()
        expected = 2 if server.port == owner.port else 0
        assert shard[b"flask-socketio"] == expected
        assert classic[b"flask-socketio"] == 0


def test_room_emits_are_routed_on_shard_channels_in_the_common_slot(
        redis_cluster, bus_nodes, connect) -> None:
    seeds = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster)
    n1, n2, n3 = bus_nodes(3, message_queue=f"redis+cluster://{seeds}")
    a, b, idle = connect(n1), connect(n2), connect(n3)
    wait_nodes(a, 3)
    b.call("join", {"room": "r"})
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    owner = cluster.get_node_from_key("flask-socketio")
    cluster.close()
    owner_client = redis.Redis(port=owner.port)
    room_channels = [channel for channel in owner_client.pubsub_shardchannels(
        "{flask-socketio}:room:*")]
    # every connection's sid room and the room r: shard channels on the owner
    assert room_channels, "no room channel is subscribed on the common slot's shard"
    before = idle.call("stats")["stats"]["received"]
    for i in range(50):
        a.call("relay", {"to": "r", "payload": f"m{i}"})
    assert b.wait_event("relayed", count=50) == [f"m{i}" for i in range(50)]
    # the node without a member of r read none of them (heartbeats only)
    assert idle.call("stats")["stats"]["received"] - before < 10
    owner_client.close()
