"""Issue 24, findings 7, 8 and 10 (sessions), on real nodes and a real Redis:
an ack never claims a session write the store refused; a connection's record
grows O(1) per namespace CONNECT; keys of the wrong type where a session,
its record or its resume id live heal instead of failing for good."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import socketio

from session_store import RedisSessionStore
from tests.harness.peers import WAIT, Peer
from tests.harness.raw_websocket import RawWebSocket, metric

NAMESPACES_APP = "tests.apps.namespaces_app:socketio"


def _sessions_metric(node: Any, kind: str) -> float:
    try:
        return metric(node, "socketio_sessions_total", kind)
    except AssertionError:
        return 0.0


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis; puts its memory settings back afterwards."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    saved = {name: client.config_get(name)[name] for name in ("maxmemory", "maxmemory-policy")}
    yield client
    for name, value in saved.items():
        client.config_set(name, value)
    client.close()


def _fill(admin: redis.Redis) -> None:
    """Redis at maxmemory with noeviction: every write that needs memory is refused."""
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        admin.set("probe", "x")


def _make_room(admin: redis.Redis) -> None:
    admin.config_set("maxmemory", 0)
    admin.set("probe", "x")  # writes are accepted again


# -- finding 7: write-through means write-through ------------------------------

def test_a_refused_session_write_is_never_acked_as_saved(
        node_factory: Any, sio_client_factory: Any, admin: redis.Redis) -> None:
    first, second = node_factory(count=2)
    peer = Peer(sio_client_factory, first.url, reconnection=False)
    assert peer.call("session_set", {"v": "v1"}) == ["v"]  # saved, acked
    pid = peer.client.pid()
    _fill(admin)
    try:
        # the app's on_error handler gets SessionNotSaved; its return is the ack
        for _ in range(5):
            reply = peer.call("session_set", {"v": "v2"})
            assert reply == {"error": "SessionNotSaved", "scope": "/"}
        assert _sessions_metric(first, "session_not_saved") == 5
        # logged once per window, not once per event
        lines = [line for line in first.log_text().splitlines()
                 if "before its ack" in line]
        assert len(lines) == 1, lines
        assert "maxmemory" in lines[0]
    finally:
        _make_room(admin)
    first.kill(signal.SIGKILL)
    resumed = Peer(sio_client_factory, second.url, cls=socketio.Client, auth={"pid": pid})
    assert resumed.welcome["resumed"] is True
    assert resumed.get("v") == "v1"  # and nobody was told v2 was saved


def test_without_an_error_handler_a_refused_write_gets_no_ack(
        node_factory: Any, sio_client_factory: Any, admin: redis.Redis) -> None:
    (node,) = node_factory(app=NAMESPACES_APP)
    client = sio_client_factory(cls=socketio.Client, reconnection=False)
    client.connect(node.url, transports=["websocket"], wait_timeout=WAIT)
    assert client.call("session_set", {"v": "v1"}, timeout=WAIT) == "saved"
    _fill(admin)
    try:
        with pytest.raises(socketio.exceptions.TimeoutError):
            client.call("session_set", {"v": "v2"}, timeout=2)
        assert _sessions_metric(node, "session_not_saved") == 1
    finally:
        _make_room(admin)
    # the change stayed pending: the next write carries it
    assert client.call("session_set", {"w": 1}, timeout=WAIT) == "saved"
    assert client.call("session_get", "v", timeout=WAIT) == {"value": "v2"}
    assert "Traceback" not in node.log_text()


# -- finding 8: the connection record grows O(1) per namespace -----------------

def _connect_namespace(ws: RawWebSocket, namespace: str, auth: str = "") -> dict[str, Any]:
    ws.send(f"40{namespace},{auth}")
    reply = ws.read_until(f"40{namespace},")
    return dict(json.loads(reply[len(f"40{namespace},"):]))


def _input_bytes(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_net_input_bytes"])


def test_a_namespace_connect_writes_the_same_bytes_whatever_the_count(
        node_factory: Any, admin: redis.Redis) -> None:
    (node,) = node_factory(app=NAMESPACES_APP)
    ws = RawWebSocket(node)
    ws.send("40")
    pid = json.loads(ws.read_until("40")[2:])["pid"]
    # long names, so a record rewritten whole would show at once; 8 more
    # namespaces stay under the default cap of namespaces per connection
    names = [f"/n{index}-" + "x" * 400 for index in range(8)]
    sids: dict[str, str] = {}
    written: list[int] = []
    for name in names:
        before = _input_bytes(admin)
        sids[name] = _connect_namespace(ws, name)["sid"]
        written.append(_input_bytes(admin) - before)
    # the last CONNECT writes about what the first did (not 7 names more)
    assert written[-1] < written[0] + 1000, written
    ws.close()
    # a resume after many namespaces restores each of them (recovery on:
    # the resumed connection gets its sid back in every namespace)
    again = RawWebSocket(node)
    again.send("40" + json.dumps({"pid": pid}))
    assert '"pid"' in again.read_until("40")
    for name in names:
        assert _connect_namespace(again, name)["sid"] == sids[name]
    again.close()


# -- finding 10: wrong-typed session, record and resume keys ----------------------

def test_wrong_typed_session_and_record_keys_heal(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    (node,) = node_factory()
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    peer = Peer(sio_client_factory, node.url, reconnection=False)
    peer.call("session_set", {"v": "v1"})
    peer.call("join", "r1")
    (data_key,) = client.keys("sio:sess:data:*")
    session_id = data_key.decode().rsplit(":", 1)[1]
    other = Peer(sio_client_factory, node.url, reconnection=False)
    # someone with Redis access writes keys of the wrong type over the peer's
    client.delete(data_key)
    client.set(data_key, "not a hash")
    record, rooms = f"sio:sess:conn:{session_id}", f"sio:sess:conn:{session_id}:rooms"
    client.delete(record, rooms)
    client.hset(record, "not", "a string")
    client.set(rooms, "not a set")
    # the peer keeps working: its next write is stored, with the rooms
    assert peer.call("session_set", {"v": "v2"}) == ["v"]
    peer.call("join", "r2")
    assert client.type(data_key) == b"hash" and client.type(rooms) == b"set"
    # and so does everyone else
    assert other.call("session_set", {"o": 1}) == ["o"]
    assert _sessions_metric(node, "sessions_rewritten") >= 1
    assert metric(node, "socketio_sessions_total", "wrong_type_keys") >= 1
    heal_lines = [line for line in node.log_text().splitlines()
                  if "a key of the wrong type was found" in line]
    assert len(heal_lines) == 1, heal_lines
    pid = peer.client.pid()
    peer.client.disconnect()
    resumed = Peer(sio_client_factory, node.url, cls=socketio.Client, auth={"pid": pid})
    assert resumed.welcome["resumed"] is True
    assert resumed.get("v") == "v2"
    assert {"r1", "r2"} <= set(resumed.welcome["rooms"])
    client.close()


def test_a_wrong_typed_resume_key_gives_a_fresh_session(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    (node,) = node_factory()
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    owner = Peer(sio_client_factory, node.url, reconnection=False)
    owner.call("session_set", {"secret": "owner's"})
    pid = owner.client.pid()
    owner.client.disconnect()
    store = RedisSessionStore(client)
    resume_key = store.resume_key(pid)
    assert client.type(resume_key) == b"string"
    client.delete(resume_key)
    client.hset(resume_key, "s", "someone")
    intruder = Peer(sio_client_factory, node.url, cls=socketio.Client, auth={"pid": pid})
    assert intruder.welcome["resumed"] is False
    assert intruder.get("secret") is None
    assert client.exists(resume_key) == 0  # cleared
    assert metric(node, "socketio_sessions_total", "wrong_type_keys") == 1
    client.close()


def test_a_wrong_typed_session_does_not_stop_the_other_leases(redis_url: str,
                                                             caplog: Any) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    store = RedisSessionStore(client, ttl=60, lease_ttl=120)
    handles = [store.create({"n": index}, None) for index in range(3)]
    bad = handles[1].session_id
    client.delete(store.session_key(bad))
    client.set(store.session_key(bad), "x")
    for handle in handles:
        if handle.session_id != bad:
            store.expire(handle.session_id, 5)
    with caplog.at_level(logging.WARNING, logger="session_store"):
        lost = store.renew([handle.session_id for handle in handles])
    assert lost == [bad]  # for the node to write back from its connection
    assert store.wrong_type_keys == 1 and client.exists(store.session_key(bad)) == 0
    for handle in handles:
        if handle.session_id != bad:
            assert client.pttl(store.session_key(handle.session_id)) > 60_000
    assert sum("wrong type" in record.getMessage() for record in caplog.records) == 1
    client.close()
