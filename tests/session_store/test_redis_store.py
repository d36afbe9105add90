"""RedisSessionStore against a real redis-server: key layout, TTLs, safety, failures."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator

import pytest
import redis

from session_store import (
    RedisSessionStore,
    ResumeStatus,
    SessionDataError,
    SessionNotFound,
    SessionStoreUnavailable,
)
from session_store.resume import stored_form

PREFIX = "app1:sess:"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def rstore(client: redis.Redis) -> RedisSessionStore:
    return RedisSessionStore(client, key_prefix=PREFIX, ttl=30, lease_ttl=3600, tombstone_ttl=60)


def all_keys(client: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in client.keys("*"))


def assert_every_key_expires(client: redis.Redis) -> None:
    for key in client.keys("*"):
        assert client.pttl(key) > 0, f"{key!r} has no TTL"


def test_key_layout_under_the_prefix(rstore: RedisSessionStore, client: redis.Redis) -> None:
    handle = rstore.create({"a": 1}, "alice")
    rid = rstore.issue_resume(handle.session_id, "alice")
    sid = handle.session_id
    # resume ids are kept as their digests: reading Redis yields none of them;
    # every key of the session is hash-tagged with its id (one cluster slot)
    stored = stored_form(rid)
    data, pointer = f"{PREFIX}data:{{{sid}}}", f"{PREFIX}resume:{{{stored}}}"
    assert all_keys(client) == sorted([data, pointer])
    assert rid not in repr(client.hgetall(data))
    assert client.hget(data, "m:resume") == stored.encode()
    assert client.get(pointer) == sid.encode()  # the pointer holds the session id only
    assert rstore.session_key(sid) == data and rstore.resume_key(rid) == pointer
    rstore.claim_resume(rid, "alice")
    tombstone = f"{PREFIX}used:{{{sid}}}:{stored}"
    assert rstore.tombstone_key(rid, sid) == tombstone
    # the binding is consumed; the pointer lives on as long as the tombstone
    assert all_keys(client) == sorted([data, tombstone, pointer])
    assert client.hget(data, "m:resume") is None
    assert 55_000 < client.pttl(pointer) <= 60_000
    assert_every_key_expires(client)


def test_hash_fields_and_metadata(rstore: RedisSessionStore, client: redis.Redis) -> None:
    handle = rstore.create({"user": "alice@example.com", "n": 1}, "alice@example.com")
    raw = {
        k.decode(): v.decode()
        for k, v in client.hgetall(rstore.session_key(handle.session_id)).items()
    }
    assert raw["d:user"] == '"alice@example.com"' and raw["d:n"] == "1"
    assert raw["m:version"] == "0" and float(raw["m:created"]) == float(raw["m:updated"])
    # The identity is stored as a digest, not in the clear.
    assert raw["m:identity"].startswith("sha256:") and "alice" not in raw["m:identity"]
    handle.session["n"] = 2
    rstore.save(handle.session_id, handle.session)
    assert client.hget(rstore.session_key(handle.session_id), "m:version") == b"1"


def test_session_keys_cannot_collide_with_metadata(rstore: RedisSessionStore) -> None:
    handle = rstore.create({"m:version": "mine", "m:identity": "x"}, None)
    handle.session["m:resume"] = "also mine"
    rstore.save(handle.session_id, handle.session)
    assert rstore.load(handle.session_id) == {
        "m:version": "mine",
        "m:identity": "x",
        "m:resume": "also mine",
    }


def test_empty_save_writes_nothing(rstore: RedisSessionStore, client: redis.Redis) -> None:
    handle = rstore.create({"a": 1}, None)
    rstore.save(handle.session_id, handle.session)
    assert client.hget(rstore.session_key(handle.session_id), "m:version") == b"0"


def test_prefixes_isolate_stores(client: redis.Redis) -> None:
    one = RedisSessionStore(client, key_prefix="one:")
    two = RedisSessionStore(client, key_prefix="two:")
    handle = one.create({"a": 1}, None)
    rid = one.issue_resume(handle.session_id, None)
    assert two.load(handle.session_id) is None
    assert two.claim_resume(rid, None).status is ResumeStatus.UNKNOWN
    assert all(k.startswith("one:") for k in all_keys(client))


def test_ttls_connected_lease_then_disconnect_countdown(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle = rstore.create({}, None)
    rid = rstore.issue_resume(handle.session_id, None)
    # the binding is in the session's hash (its TTL); the pointer to it
    # follows that TTL
    skey, rkey = rstore.session_key(handle.session_id), rstore.resume_key(rid)
    assert client.hget(skey, "m:resume") == stored_form(rid).encode()
    assert 3590_000 < client.pttl(skey) <= 3600_000
    assert 3590_000 < client.pttl(rkey) <= 3600_000
    rstore.expire(handle.session_id)
    assert 25_000 < client.pttl(skey) <= 30_000
    assert 25_000 < client.pttl(rkey) <= 30_000
    rstore.expire(handle.session_id, ttl=5)
    assert 0 < client.pttl(skey) <= 5000 and 0 < client.pttl(rkey) <= 5000
    rstore.persist(handle.session_id)
    assert client.pttl(skey) > 3590_000 and client.pttl(rkey) > 3590_000


def test_resume_issued_after_disconnect_gets_the_countdown(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle = rstore.create({}, None)
    rstore.expire(handle.session_id, ttl=10)
    rid = rstore.issue_resume(handle.session_id, None)
    skey = rstore.session_key(handle.session_id)
    assert client.hget(skey, "m:resume") == stored_form(rid).encode()
    assert 0 < client.pttl(skey) <= 10_000
    assert 0 < client.pttl(rstore.resume_key(rid)) <= 10_000


def _assert_pointer_outlives(client: redis.Redis, skey: str, pointer: str) -> None:
    """Both have the lease (an hour), the pointer's ending no earlier (absolute
    expiry times: two PTTL reads a millisecond apart could not tell)."""
    assert 3590_000 < client.pttl(skey) <= 3600_000
    assert (int(client.execute_command("PEXPIRETIME", skey))
            <= int(client.execute_command("PEXPIRETIME", pointer)))


def test_create_resumable_writes_what_create_and_issue_write_in_one_round_trip(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    client.config_resetstat()
    handle, rid = rstore.create_resumable({"a": 1}, "alice")
    stats = client.info("commandstats")
    # one pipeline: the creation script and the pointer, no second script
    # (create() then issue_resume() sends two scripts and two pointer writes)
    assert stats["cmdstat_eval"]["calls"] == 1 and stats["cmdstat_set"]["calls"] == 1
    assert "cmdstat_evalsha" not in stats
    skey, pointer = rstore.session_key(handle.session_id), rstore.resume_key(rid)
    # the same layout as create() then issue_resume(): the binding in the
    # hash, the pointer with the session's TTL, never expiring first
    twin = rstore.create({"a": 1}, "alice")
    twin_rid = rstore.issue_resume(twin.session_id, "alice")
    twin_fields = client.hgetall(rstore.session_key(twin.session_id))
    fields = client.hgetall(skey)
    assert set(fields) == set(twin_fields)
    assert fields[b"m:resume"] == stored_form(rid).encode()
    assert client.get(pointer) == handle.session_id.encode()
    assert client.get(rstore.resume_key(twin_rid)) == twin.session_id.encode()
    _assert_pointer_outlives(client, skey, pointer)


def test_reconnected_leases_and_rearms_in_one_round_trip(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle, rid = rstore.create_resumable({}, "alice")
    rstore.expire(handle.session_id, ttl=10)
    assert rstore.claim_resume(rid, "alice").granted
    client.config_resetstat()
    assert rstore.reconnected(handle.session_id, "alice", reuse=rid) == rid
    stats = client.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 1 and stats["cmdstat_set"]["calls"] == 1
    assert "cmdstat_evalsha" not in stats and "cmdstat_del" not in stats
    skey, pointer = rstore.session_key(handle.session_id), rstore.resume_key(rid)
    assert client.hget(skey, "m:resume") == stored_form(rid).encode()
    _assert_pointer_outlives(client, skey, pointer)
    # a session gone meanwhile leaves no pointer behind
    gone = "Q" * 32
    with pytest.raises(SessionNotFound):
        rstore.reconnected(gone, "alice")
    assert all_keys(client) == sorted([skey, pointer,
                                       rstore.tombstone_key(rid, handle.session_id)])


def test_expire_with_the_known_resume_id_moves_both_in_one_round_trip(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle, rid = rstore.create_resumable({}, None)
    skey, pointer = rstore.session_key(handle.session_id), rstore.resume_key(rid)
    client.config_resetstat()
    assert rstore.expire(handle.session_id, ttl=10, resume_id=rid)
    stats = client.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 1 and stats["cmdstat_pexpire"]["calls"] == 2
    assert 0 < client.pttl(skey) <= 10_000 and 0 < client.pttl(pointer) <= 10_000
    # a hint that is out of date: the bound id's pointer still moves along
    newer = rstore.issue_resume(handle.session_id, None)
    rstore.persist(handle.session_id)
    assert rstore.expire(handle.session_id, ttl=5, resume_id=rid)
    assert 0 < client.pttl(rstore.resume_key(newer)) <= 5_000
    assert rstore.claim_resume(newer, None).granted
    assert not rstore.expire("Q" * 32, resume_id=rid)


def test_tombstone_ttl(rstore: RedisSessionStore, client: redis.Redis) -> None:
    handle = rstore.create({}, None)
    rid = rstore.issue_resume(handle.session_id, None)
    assert rstore.claim_resume(rid, None).granted
    assert 55_000 < client.pttl(rstore.tombstone_key(rid, handle.session_id)) <= 60_000


def test_a_session_without_ttl_gets_the_lease_on_save(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle = rstore.create({}, None)
    client.persist(rstore.session_key(handle.session_id))  # e.g. an operator's PERSIST
    handle.session["a"] = 1
    rstore.save(handle.session_id, handle.session)
    assert client.pttl(rstore.session_key(handle.session_id)) > 3590_000


def test_pickle_is_just_data(rstore: RedisSessionStore, client: redis.Redis) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (exec, ("raise SystemExit('executed')",))

    payload = pickle.dumps(Boom())
    handle = rstore.create({"blob": payload}, None)
    stored = client.hget(rstore.session_key(handle.session_id), "d:blob")
    assert stored is not None and stored.startswith(b'{" b":')
    assert rstore.load(handle.session_id) == {"blob": payload}
    # Someone writes a raw pickle into the hash: it is refused, never unpickled.
    client.hset(rstore.session_key(handle.session_id), "d:evil", payload)
    with pytest.raises(SessionDataError, match="'evil'"):
        rstore.load(handle.session_id)


def test_forged_resume_record_in_redis_is_refused(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    rid = "F" * 32
    client.set(rstore.resume_key(rid), pickle.dumps({"s": "x"}), px=10_000)
    assert rstore.claim_resume(rid, None).status is ResumeStatus.MALFORMED
    client.set(rstore.resume_key(rid), '{"s": 5, "i": "none"}', px=10_000)
    assert rstore.claim_resume(rid, None).status is ResumeStatus.MALFORMED
    # a pointer to a real session whose binding holds a pickle
    handle = rstore.create({}, None)
    client.set(rstore.resume_key(rid), handle.session_id, px=10_000)
    client.hset(rstore.session_key(handle.session_id),
                mapping={"m:resume": stored_form(rid), "m:resume_record": pickle.dumps({})})
    assert rstore.claim_resume(rid, None).status is ResumeStatus.MALFORMED


def test_url_constructor_and_repr_hide_the_password(redis_url: str) -> None:
    store = RedisSessionStore(redis_url)
    handle = store.create({"a": 1}, None)
    assert store.load(handle.session_id) == {"a": 1}
    assert "127.0.0.1" in repr(store)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_redis_raises_unavailable_without_password() -> None:
    port = _closed_port()
    store = RedisSessionStore(f"redis://:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(SessionStoreUnavailable) as info:
        store.create({"a": 1}, None)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "create a session" in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    for call in (
        lambda: store.load("A" * 32),
        lambda: store.expire("A" * 32),
        lambda: store.persist_many(["A" * 32, "B" * 32]),
        lambda: store.claim_resume("A" * 32, None),
    ):
        with pytest.raises(SessionStoreUnavailable):
            call()


def test_redis_killed_mid_session_raises_unavailable(redis_server, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    store = RedisSessionStore(redis_url, redis_options={"socket_timeout": 2})
    handle = store.create({"a": 1}, None)
    redis_server.kill()
    redis_server.wait(timeout=10)
    try:
        handle.session["b"] = 2
        with pytest.raises(SessionStoreUnavailable, match="save a session"):
            store.save(handle.session_id, handle.session)
        assert handle.session.modified is True  # still pending, to retry later
    finally:
        redis_server.start()
    # Redis is back (empty: no persistence): the store works again, no restart needed.
    assert store.load(handle.session_id) is None
    assert store.load(store.create({"c": 3}, None).session_id) == {"c": 3}
