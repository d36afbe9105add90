"""RedisSessionStore on a real 3-master Redis Cluster: hash-tagged keys, one
slot per session, sessions spread over every master, resume ids found
through their digest without a cross-slot command (issue 25, item 3).

The contract tests of tests/session_store run on the cluster too (the
``redis-cluster`` store of conftest.py); these check what is particular to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from session_store import RedisSessionStore, ResumeStatus, SessionStoreUnavailable
from session_store.resume import stored_form
from tests.harness.redis_cluster import master_of

SECRET = "cluster-store-tests-record-secret"


@pytest.fixture
def cstore(redis_cluster_url: str) -> RedisSessionStore:
    return RedisSessionStore(redis_cluster_url, ttl=30, lease_ttl=3600, tombstone_ttl=60,
                             secret=SECRET)


@pytest.fixture
def client(redis_cluster: list[Any], redis_cluster_url: str) -> Iterator[RedisCluster]:
    c = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    yield c
    c.close()


def keys_per_master(servers: list[Any]) -> dict[int, int]:
    counts = {}
    for server in servers:
        c = redis.Redis(port=server.port)
        counts[server.port] = int(c.dbsize())
        c.close()
    return counts


def test_a_sessions_keys_share_one_slot(cstore: RedisSessionStore, client: RedisCluster,
                                        redis_cluster: list[Any]) -> None:
    handle = cstore.create({"a": 1}, "alice")
    sid = handle.session_id
    rid = cstore.issue_resume(sid, "alice")
    first = cstore.claim_resume(rid, "alice")
    assert first.granted and first.session_id == sid
    rid2 = cstore.issue_resume(sid, "alice")
    own = [cstore.session_key(sid), cstore.tombstone_key(rid, sid)]
    assert all(client.exists(key) for key in own)
    slots = {client.keyslot(key) for key in own}
    assert slots == {client.keyslot(sid)}  # the tag is the session id
    # the pointers are on their digest's slot: the only keys elsewhere
    pointer = cstore.resume_key(rid2)
    assert client.get(pointer) == sid.encode()
    assert client.keyslot(pointer) == client.keyslot(stored_form(rid2))
    assert master_of(redis_cluster, pointer) in {s.port for s in redis_cluster}


def test_sessions_spread_over_every_master(cstore: RedisSessionStore,
                                           redis_cluster: list[Any]) -> None:
    for _ in range(300):
        handle = cstore.create({"n": 1}, None)
        cstore.issue_resume(handle.session_id, None)
    counts = keys_per_master(redis_cluster)
    assert sum(counts.values()) == 600  # a hash and a pointer each
    for port, count in counts.items():
        # 16384 slots split in three: each master holds about a third
        assert 0.2 * 600 < count < 0.47 * 600, (port, counts)


def test_resume_rotates_and_is_single_use(cstore: RedisSessionStore,
                                          client: RedisCluster) -> None:
    handle = cstore.create({"cart": [1]}, "bob")
    sid = handle.session_id
    old = cstore.issue_resume(sid, "bob")
    new = cstore.issue_resume(sid, "bob")  # rotation: the old id is dead at once
    assert client.exists(cstore.resume_key(old)) == 0
    assert cstore.claim_resume(old, "bob").status is ResumeStatus.UNKNOWN
    assert cstore.claim_resume(new, "mallory").status is ResumeStatus.IDENTITY_MISMATCH
    granted = cstore.claim_resume(new, "bob")
    assert granted.granted and granted.session_id == sid
    assert cstore.load(sid) == {"cart": [1]}
    assert cstore.claim_resume(new, "bob").status is ResumeStatus.REPLAYED
    assert cstore.resume_counts()["granted"] == 1


def test_expiry_on_the_cluster(redis_cluster_url: str) -> None:
    store = RedisSessionStore(redis_cluster_url, ttl=0.5, secret=SECRET)
    handle = store.create({"a": 1}, None)
    rid = store.issue_resume(handle.session_id, None)
    assert store.expire(handle.session_id)
    deadline = time.monotonic() + 5
    while store.load(handle.session_id) is not None:
        assert time.monotonic() < deadline, "the session did not expire"
        time.sleep(0.05)
    assert store.claim_resume(rid, None).status is ResumeStatus.UNKNOWN


def test_wrong_typed_keys_heal_on_the_cluster(cstore: RedisSessionStore,
                                              client: RedisCluster) -> None:
    handle = cstore.create({"a": 1}, None)
    rid = cstore.issue_resume(handle.session_id, None)
    client.delete(cstore.resume_key(rid))
    client.hset(cstore.resume_key(rid), "s", "someone")  # a pointer of the wrong type
    assert cstore.claim_resume(rid, None).status is ResumeStatus.UNKNOWN
    assert client.exists(cstore.resume_key(rid)) == 0
    key = cstore.session_key(handle.session_id)
    client.delete(key)
    client.set(key, "x")  # a session of the wrong type
    assert cstore.load(handle.session_id) is None and client.exists(key) == 0
    assert cstore.wrong_type_keys == 2
    # written back under its id, it works again
    assert cstore.restore(handle.session_id, {"a": 1}, None)
    assert cstore.load(handle.session_id) == {"a": 1}


def test_forged_binding_is_refused_by_its_mac(cstore: RedisSessionStore,
                                              client: RedisCluster) -> None:
    victim = cstore.create({"user": "admin"}, "admin")
    rid = "R" * 32
    # a pointer and a binding written by hand for the anonymous identity
    client.hset(cstore.session_key(victim.session_id), mapping={
        "m:resume": stored_form(rid),
        "m:resume_record": json.dumps({"s": victim.session_id, "i": "none"})})
    client.set(cstore.resume_key(rid), victim.session_id, px=60_000)
    assert cstore.claim_resume(rid, None).status is ResumeStatus.UNKNOWN
    assert cstore.rejected_records == 1
    # a genuine value copied into another session
    other = cstore.create({}, None)
    client.hset(cstore.session_key(other.session_id), "d:user",
                client.hget(cstore.session_key(victim.session_id), "d:user"))
    assert cstore.load(other.session_id) is None and cstore.rejected_records == 2


def test_a_brace_in_the_prefix_is_refused(redis_cluster_url: str) -> None:
    with pytest.raises(ValueError, match="without braces"):
        RedisSessionStore(redis_cluster_url, key_prefix="app{1}:")


def test_an_unreachable_cluster_is_unavailable_not_a_crash() -> None:
    # made on first use: the node starts, its sessions fail like a down Redis
    store = RedisSessionStore("redis+cluster://:s3cret@127.0.0.1:1",
                              redis_options={"socket_connect_timeout": 0.5})
    with pytest.raises(SessionStoreUnavailable) as info:
        store.create({"a": 1}, None)
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    assert "s3cret" not in repr(store)
