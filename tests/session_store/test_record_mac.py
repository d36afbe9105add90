"""Session values and resume records carry MACs: forgeries in a real Redis
are treated as missing, logged and counted (issue 16, part 2)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from session_store import MemorySessionStore, RedisSessionStore, ResumeStatus
from session_store.record_mac import MacForSecret, RecordMac, derive_key
from session_store.resume import stored_form

SECRET = "record-mac-tests-deployment-secret"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def rstore(redis_url: str) -> RedisSessionStore:
    return RedisSessionStore(redis_url, ttl=30, secret=SECRET)


def bind(client: redis.Redis, rstore: RedisSessionStore, rid: str, sid: str,
         record: str) -> None:
    """Bind resume id ``rid`` to session ``sid`` with ``record``, by hand: the
    pointer to the session and the binding in its hash."""
    client.hset(rstore.session_key(sid), mapping={"m:resume": stored_form(rid),
                                                  "m:resume_record": record})
    client.set(rstore.resume_key(rid), sid, px=60_000)


def record_of(client: redis.Redis, rstore: RedisSessionStore, sid: str) -> dict[str, Any]:
    """The resume record ``sid`` is bound to now."""
    return dict(json.loads(client.hget(rstore.session_key(sid), "m:resume_record")))


def test_three_redis_writes_no_longer_forge_an_admin_session(
    rstore: RedisSessionStore, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # the issue's attack, with a plain redis client: a session hash holding
    # an admin's Flask-Login id, a resume record binding it to the
    # anonymous identity (and the pointer to it), and a TTL
    sid, rid = "S" * 32, "R" * 32
    client.hset(rstore.session_key(sid), mapping={"d:_user_id": '"admin"',
                                                  "m:identity": "none"})
    bind(client, rstore, rid, sid, json.dumps({"s": sid, "i": "none"}))
    client.pexpire(rstore.session_key(sid), 60_000)
    with caplog.at_level(logging.WARNING, logger="session_store"):
        claim = rstore.claim_resume(rid, None)
        assert rstore.load(sid) is None
    assert claim.status is ResumeStatus.UNKNOWN and not claim.granted
    assert rstore.rejected_records == 2
    text = caplog.text
    assert "failed its MAC check" in text and rid not in text and sid not in text


def test_a_genuine_record_round_trips_and_any_change_is_rejected(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    handle = rstore.create({"user": "alice", "n": 1}, "alice")
    key = rstore.session_key(handle.session_id)
    assert client.hget(key, "d:user") != '"alice"'  # tagged, not bare JSON
    assert rstore.load(handle.session_id) == {"user": "alice", "n": 1}
    rid = rstore.issue_resume(handle.session_id, "alice")
    assert rstore.claim_resume(rid, "alice").session_id == handle.session_id
    # a value changed in place
    tag, _, _ = client.hget(key, "d:user").partition(".")
    client.hset(key, "d:user", f'{tag}."admin"')
    assert rstore.load(handle.session_id) is None
    # a genuine value moved to another session, or to another key
    other = rstore.create({"user": "mallory"}, "mallory")
    client.hset(key, "d:user", client.hget(rstore.session_key(other.session_id), "d:user"))
    assert rstore.load(handle.session_id) is None
    client.hset(rstore.session_key(other.session_id), "d:role",
                client.hget(rstore.session_key(other.session_id), "d:user"))
    assert rstore.load(other.session_id) is None
    assert rstore.rejected_records == 3


def test_a_resume_record_repointed_or_rebound_is_refused(
    rstore: RedisSessionStore, client: redis.Redis
) -> None:
    victim = rstore.create({"user": "admin"}, "admin")
    mine = rstore.create({}, None)
    rid = rstore.issue_resume(mine.session_id, None)
    record = record_of(client, rstore, mine.session_id)
    record["s"] = victim.session_id  # my genuine record, pointed at the admin's session
    bind(client, rstore, rid, victim.session_id, json.dumps(record))
    assert rstore.claim_resume(rid, None).status is ResumeStatus.UNKNOWN
    rid2 = rstore.issue_resume(victim.session_id, "admin")
    record = record_of(client, rstore, victim.session_id)
    record["i"] = "none"  # the admin's record, rebound to anonymous
    bind(client, rstore, rid2, victim.session_id, json.dumps(record))
    assert rstore.claim_resume(rid2, None).status is ResumeStatus.UNKNOWN
    assert rstore.rejected_records == 2


def test_another_deployments_secret_does_not_verify(redis_url: str) -> None:
    ours = RedisSessionStore(redis_url, secret=SECRET)
    theirs = RedisSessionStore(redis_url, secret="another-deployment-secret")
    handle = theirs.create({"user": "x"}, None)
    rid = theirs.issue_resume(handle.session_id, None)
    assert ours.load(handle.session_id) is None
    assert ours.claim_resume(rid, None).status is ResumeStatus.UNKNOWN
    assert ours.rejected_records == 2


def test_the_secret_may_be_read_late_and_the_key_is_derived() -> None:
    holder: dict[str, str] = {}
    store = MemorySessionStore(secret=lambda: holder.get("key"))
    assert store._mac() is None  # no secret yet: no MACs
    holder["key"] = SECRET
    handle = store.create({"a": 1}, None)
    assert store.load(handle.session_id) == {"a": 1}
    # the record key is derived with a label, never the secret itself
    assert derive_key(SECRET) != SECRET.encode() and len(derive_key(SECRET)) == 32
    mac = RecordMac(SECRET)
    sealed = mac.seal_field("s" * 32, "d:a", "1")
    assert mac.open_field("s" * 32, "d:a", sealed) == "1"
    assert mac.open_field("t" * 32, "d:a", sealed) is None
    assert RecordMac("other-secret").open_field("s" * 32, "d:a", sealed) is None


def test_mac_for_secret_derives_again_only_when_the_secret_changes() -> None:
    holder: dict[str, str] = {}
    macs = MacForSecret(lambda: holder.get("key"))
    assert macs.current() is None
    holder["key"] = SECRET
    first = macs.current()
    assert first is not None and macs.current() is first
    holder["key"] = "another-secret-of-the-deployment"
    assert macs.current() is not first
    assert MacForSecret("").current() is None and MacForSecret(None).current() is None


def test_a_node_refuses_a_session_forged_in_redis(
    node_factory: Any, sio_client_factory: Any, redis_url: str, client: redis.Redis
) -> None:
    # the issue's attack on a real node: an app that refuses anonymous users,
    # a signed bus, and three Redis writes that made an anonymous client
    # current_user=admin
    import socketio

    from tests.harness.peers import Peer

    (node,) = node_factory()
    sid, rid = "S" * 32, "R" * 32
    prefix = "sio:sess:"
    client.hset(f"{prefix}data:{{{sid}}}", mapping={
        "d:_user_id": '"admin"', "d:_fresh": "true", "m:identity": "none",
        "m:created": "1", "m:updated": "1", "m:version": "0",
        "m:resume": stored_form(rid),
        "m:resume_record": json.dumps({"s": sid, "i": "none"})})
    # named as the store names it (the digest of the id): only the MAC stops it
    client.set(f"{prefix}resume:{{{stored_form(rid)}}}", sid, px=60_000)
    client.pexpire(f"{prefix}data:{{{sid}}}", 60_000)
    intruder = Peer(sio_client_factory, node.url, cls=socketio.Client, auth={"pid": rid})
    assert intruder.welcome["resumed"] is False
    assert intruder.welcome["user"] is None  # still anonymous
    metrics = requests.get(node.url + "/metrics", timeout=5).text
    assert 'socketio_sessions_total{kind="rejected_records"} 1.0' in metrics
    assert "failed its MAC check" in node.log_text()
