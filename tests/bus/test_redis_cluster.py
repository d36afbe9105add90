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
