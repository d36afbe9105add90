"""Forked sessions persisted in Redis and resumed on any node (real nodes, Redis, HAProxy)."""

from __future__ import annotations

import queue
import signal
import time
from typing import Any

import redis
import requests
import socketio

from tests.harness.peers import WAIT, Peer, wait_reconnected


def test_session_and_rooms_survive_a_sigkilled_node(node_factory: Any, haproxy_factory: Any,
                                                    sio_client_factory: Any) -> None:
    nodes = node_factory(count=2)
    proxy = haproxy_factory(nodes)
    peer = Peer(sio_client_factory, proxy.url)
    first_node = peer.welcome["node"]
    assert peer.welcome["resumed"] is False
    peer.call("session_set", {"x": "kept", "n": 7})
    peer.call("join", "survivors")
    doomed = next(node for node in nodes if node.name == first_node)
    survivor = next(node for node in nodes if node.name != first_node)

    old_sid = peer.client.get_sid()
    doomed.kill(signal.SIGKILL)
    welcome = wait_reconnected(peer, old_sid)
    assert welcome["node"] == survivor.name
    assert welcome["resumed"] is True
    assert "survivors" in welcome["rooms"]
    assert peer.get("x") == "kept" and peer.get("n") == 7

    # still in its room: a client on the surviving node reaches it there
    other = Peer(sio_client_factory, survivor.url, cls=socketio.Client)
    other.call("to_room", {"room": "survivors", "text": "after the crash"})
    assert peer.next("room_message")["text"] == "after the crash"


def test_http_routes_do_not_see_socket_changes(node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory()
    http = requests.Session()
    http.get(node.url + "/login/alice", timeout=5)
    peer = Peer(sio_client_factory, node.url, http=http)
    assert peer.welcome["user"] == "Alice Liddell"
    peer.call("session_set", {"socket_only": 1})
    assert peer.get("socket_only") == 1
    assert http.get(node.url + "/session", timeout=5).json() == {"http_value": "from-http"}


def test_fifty_concurrent_writers_lose_nothing(node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2)
    peer = Peer(sio_client_factory, first.url)
    replies: queue.Queue[Any] = queue.Queue()
    for index in range(50):
        peer.client.emit("session_set", {f"key{index}": index}, callback=replies.put)
    for _ in range(50):
        replies.get(timeout=WAIT)  # every ack: every write is in Redis
    pid = peer.client.pid()
    first.kill(signal.SIGKILL)
    resumed = Peer(sio_client_factory, second.url, cls=socketio.Client, auth={"pid": pid})
    assert resumed.welcome["resumed"] is True
    keys = resumed.call("session_set", {})
    assert {f"key{index}" for index in range(50)} <= set(keys)


def _resume_with(factory: Any, url: str, pid: Any, http: requests.Session | None = None) -> Peer:
    return Peer(factory, url, cls=socketio.Client, auth={"pid": pid}, http=http)


def test_forged_resume_ids_get_a_fresh_session(node_factory: Any, sio_client_factory: Any,
                                               redis_url: str) -> None:
    (node,) = node_factory()
    owner = Peer(sio_client_factory, node.url)
    owner.call("session_set", {"secret": "owner's"})
    real = owner.client.pid()
    for forged in ["A" * 32, real[:-1] + ("A" if real[-1] != "A" else "B"), "short",
                   "../../etc/passwd", 12345, {"pid": real}]:
        intruder = _resume_with(sio_client_factory, node.url, forged)
        assert intruder.welcome["resumed"] is False
        assert intruder.get("secret") is None
        intruder.client.disconnect()
    metrics = requests.get(node.url + "/metrics", timeout=5).text
    assert 'socketio_sessions_total{kind="resume_refused"} 6.0' in metrics
    # the owner's id was never consumed by the failed attempts
    owner_log = node.log_text()
    assert real not in owner_log


def test_replayed_resume_id_is_refused(node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory()
    peer = Peer(sio_client_factory, node.url)
    peer.call("session_set", {"secret": "mine"})
    used = peer.client.pid()
    peer.client.disconnect()
    resumed = _resume_with(sio_client_factory, node.url, used)
    assert resumed.welcome["resumed"] is True and resumed.get("secret") == "mine"
    replay = _resume_with(sio_client_factory, node.url, used)
    assert replay.welcome["resumed"] is False
    assert replay.get("secret") is None


def test_a_live_connections_pid_cannot_be_claimed_without_recovery(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2)
    owner = Peer(sio_client_factory, first.url)
    owner.call("session_set", {"secret": "owner"})
    owner.call("join", "owners-room")
    pid = owner.client.pid()
    thief = _resume_with(sio_client_factory, second.url, pid)
    assert thief.welcome["resumed"] is False
    assert thief.get("secret") is None
    assert "owners-room" not in thief.welcome["rooms"]
    # the owner's session and id are intact: it still resumes with them
    assert owner.get("secret") == "owner"
    owner.client.disconnect()
    again = _resume_with(sio_client_factory, second.url, pid)
    assert again.welcome["resumed"] is True and again.get("secret") == "owner"


def test_expired_resume_id_is_refused(node_factory: Any, sio_client_factory: Any,
                                      redis_url: str) -> None:
    (node,) = node_factory(extra_args=["--session-ttl", "1"])
    peer = Peer(sio_client_factory, node.url)
    peer.call("session_set", {"secret": "short-lived"})
    pid = peer.client.pid()
    peer.client.disconnect()
    redis_client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    # the TTL (1 s) runs out for the session and its resume id
    while redis_client.keys("sio:sess:data:*") or redis_client.keys("sio:sess:resume:*"):
        assert time.monotonic() < deadline, "the session never expired"
        time.sleep(0.05)
    late = _resume_with(sio_client_factory, node.url, pid)
    assert late.welcome["resumed"] is False
    assert late.get("secret") is None
    # nothing of the expired session is left in Redis
    data_keys = redis.Redis.from_url(redis_url).keys("sio:sess:data:*")
    assert len(data_keys) == 1  # only the new connection's own session


def test_another_users_resume_id_is_refused(node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory()
    alice_http = requests.Session()
    alice_http.get(node.url + "/login/alice", timeout=5)
    alice = Peer(sio_client_factory, node.url, http=alice_http)
    alice.call("session_set", {"card": "alice's card"})
    alice_pid = alice.client.pid()
    alice.client.disconnect()

    bob_http = requests.Session()
    bob_http.get(node.url + "/login/bob", timeout=5)
    bob = _resume_with(sio_client_factory, node.url, alice_pid, http=bob_http)
    assert bob.welcome["resumed"] is False
    assert bob.welcome["user"] == "Bob Marley"
    assert bob.get("card") is None
    # the refused attempt did not burn alice's id
    again = _resume_with(sio_client_factory, node.url, alice_pid, http=alice_http)
    assert again.welcome["resumed"] is True and again.get("card") == "alice's card"


def test_resume_ids_are_random_and_never_logged_in_full(node_factory: Any,
                                                        sio_client_factory: Any) -> None:
    (node,) = node_factory()
    pids = set()
    for _ in range(3):
        peer = Peer(sio_client_factory, node.url)
        pids.add(peer.client.pid())
        peer.client.disconnect()
    assert len(pids) == 3 and all(len(pid) >= 22 for pid in pids)
    replay = _resume_with(sio_client_factory, node.url, "Z" * 32)
    assert replay.welcome["resumed"] is False
    log = node.log_text()
    assert "resume" in log  # the refusal was logged...
    assert "Z" * 32 not in log and not any(pid in log for pid in pids)  # ...redacted


def test_redis_down_at_connect_gives_a_working_unpersisted_session(
        node_factory: Any, sio_client_factory: Any, redis_server: Any) -> None:
    (node,) = node_factory()
    redis_server.kill()
    try:
        peer = Peer(sio_client_factory, node.url)
        assert peer.welcome["resumed"] is False
        peer.call("session_set", {"while": "redis is down"})
        assert peer.get("while") == "redis is down"
        assert peer.client.pid() is None  # nothing to resume: it was never stored
        metrics = requests.get(node.url + "/metrics", timeout=5).text
        assert 'socketio_sessions_total{kind="store_errors"}' in metrics
        assert 'socketio_sessions_total{kind="store_errors"} 0.0' not in metrics
        assert requests.get(node.url + "/readyz", timeout=5).status_code == 503
    finally:
        redis_server.start()
    # Redis is back: new connections are persisted again
    deadline = time.monotonic() + WAIT
    while requests.get(node.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the node never became ready again"
        time.sleep(0.1)
    later = Peer(sio_client_factory, node.url)
    assert later.client.pid() is not None


def test_a_room_forged_in_redis_is_not_joined_on_resume(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    (node,) = node_factory()
    peer = Peer(sio_client_factory, node.url)
    peer.call("join", "lobby")
    pid = peer.client.pid()
    peer.client.disconnect()
    client = redis.Redis.from_url(redis_url)
    (rooms_key,) = client.keys("sio:sess:conn:*:rooms")
    # someone with write access to Redis, but not the deployment's secret
    client.sadd(rooms_key, '["/", "admins"]')
    resumed = _resume_with(sio_client_factory, node.url, pid)
    assert resumed.welcome["resumed"] is True
    assert "lobby" in resumed.welcome["rooms"]
    assert "admins" not in resumed.welcome["rooms"]
    metrics = requests.get(f"{node.url}/metrics", timeout=5).text
    assert 'socketio_sessions_total{kind="rejected_records"} 1.0' in metrics
