"""Sessions, resume records and connection records on a real 3-master Redis
Cluster, with real nodes (``--message-queue redis+cluster://``), recovery on,
HAProxy in front (issue 25, item 3)."""

from __future__ import annotations

import re
import signal
from collections import defaultdict
from typing import Any

import redis
import socketio
from redis.cluster import RedisCluster

from tests.harness.peers import Peer, wait_reconnected
from tests.harness.waiting import wait_for

RECOVERY = {"RECOVERY_WINDOW": "60"}
PREFIX = "sio:sess:"


def session_keys(servers: list[Any]) -> dict[str, dict[str, int]]:
    """Every session-store key in the cluster by hash tag: {tag: {key: port}}."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for server in servers:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            for key in client.scan_iter(PREFIX + "*", count=1000):
                tag = re.search(r"\{([^}]+)\}", key)
                assert tag is not None, f"{key} has no hash tag"
                found[tag.group(1)][key] = server.port
        finally:
            client.close()
    return found


def test_a_session_resumes_with_its_rooms_after_a_sigkill_on_redis_cluster(
        redis_cluster: list[Any], redis_cluster_url: str, node_factory: Any,
        haproxy_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(count=2, message_queue=redis_cluster_url, env=RECOVERY)
    proxy = haproxy_factory(nodes)
    peer = Peer(sio_client_factory, proxy.url)
    assert peer.welcome["resumed"] is False
    assert peer.client.pid() is not None  # the node issued a resume id: sessions are on
    peer.call("session_set", {"x": "kept", "n": 7})
    peer.call("join", "survivors")

    # the session's hash and its connection record, rooms included, share
    # the session id's slot; the resume pointer sits on its digest's slot
    keys = session_keys(redis_cluster)
    (tag, own), = ((t, k) for t, k in keys.items() if f"{PREFIX}data:{{{t}}}" in k)
    assert {f"{PREFIX}data:{{{tag}}}", f"{PREFIX}conn:{{{tag}}}",
            f"{PREFIX}conn:{{{tag}}}:rooms"} <= set(own)
    assert len(set(own.values())) == 1
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        assert len({cluster.keyslot(key) for key in own}) == 1
        pointers = [k for t, ks in keys.items() if t != tag for k in ks]
        assert len(pointers) == 1 and pointers[0].startswith(f"{PREFIX}resume:{{")
        assert cluster.get(pointers[0]) == tag.encode()
    finally:
        cluster.close()

    doomed = next(node for node in nodes if node.name == peer.welcome["node"])
    survivor = next(node for node in nodes if node is not doomed)
    old_sid = peer.client.get_sid()
    doomed.kill(signal.SIGKILL)
    welcome = wait_reconnected(peer, old_sid)
    assert welcome["node"] == survivor.name
    assert welcome["resumed"] is True
    assert "survivors" in welcome["rooms"]
    assert peer.get("x") == "kept" and peer.get("n") == 7

    # still in its room, through the cluster's sharded pub/sub
    other = Peer(sio_client_factory, survivor.url, cls=socketio.Client)
    other.call("to_room", {"room": "survivors", "text": "after the crash"})
    assert peer.next("room_message")["text"] == "after the crash"


def test_many_sessions_spread_over_every_master(
        redis_cluster: list[Any], redis_cluster_url: str, node_factory: Any,
        sio_client_factory: Any) -> None:
    (node,) = node_factory(message_queue=redis_cluster_url)
    peers = [Peer(sio_client_factory, node.url, cls=socketio.Client) for _ in range(30)]
    for peer in peers:
        peer.call("join", "everyone")

    def spread() -> dict[int, int] | None:
        per_master: dict[int, int] = defaultdict(int)
        tags = session_keys(redis_cluster)
        sessions = [keys for tag, keys in tags.items() if f"{PREFIX}data:{{{tag}}}" in keys]
        if len(sessions) < 30:
            return None
        for keys in sessions:
            (port,) = set(keys.values())  # one session, one master
            per_master[port] += 1
        return dict(per_master)

    per_master = wait_for(spread, what="30 sessions in the cluster")
    # 30 random ids over three masters: each gets some (all on one would be
    # a bad hash tag); the chance that a fair spread misses a master is 3e-5
    assert set(per_master) == {server.port for server in redis_cluster}, per_master
