"""The SessionStore contract, run against MemorySessionStore and RedisSessionStore."""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid

import pytest

from session_store import (
    ForkedSession,
    InvalidSessionId,
    ResumeStatus,
    SessionNotFound,
    SessionStore,
    SessionValueError,
)
from session_store.resume import new_claim_token

HTTP_SESSION = {
    "_user_id": "42",
    "_fresh": True,
    "csrf": b"\x01\x02",
    "pair": (1, 2),
    "when": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    "token": uuid.UUID(int=7),
}


def run_together(target, count: int) -> list[object]:  # type: ignore[no-untyped-def]
    """Run target(i) in `count` threads released at the same instant."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = target(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return results


# -- sessions -------------------------------------------------------------------


def test_create_then_load_round_trips_the_fork(store: SessionStore) -> None:
    source = dict(HTTP_SESSION, cart=[1])
    handle = store.create(source, "42")
    source["cart"].append(2)  # the HTTP session changing later is not seen
    assert handle.session == dict(HTTP_SESSION, cart=[1])
    assert handle.session.new is True and handle.session.modified is False
    loaded = store.load(handle.session_id)
    assert isinstance(loaded, ForkedSession)
    assert loaded == dict(HTTP_SESSION, cart=[1])
    assert loaded.new is False and loaded.modified is False


def test_session_ids_are_long_random_and_distinct(store: SessionStore) -> None:
    ids = {store.create({}, None).session_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) >= 32 for i in ids)


def test_save_writes_changes_and_deletions(store: SessionStore) -> None:
    handle = store.create({"a": 1, "b": 2}, None)
    s = handle.session
    s["a"] = 10
    s["c"] = (3,)
    del s["b"]
    store.save(handle.session_id, s)
    assert s.modified is False
    assert store.load(handle.session_id) == {"a": 10, "c": (3,)}


def test_save_merges_by_key_with_a_concurrent_writer(store: SessionStore) -> None:
    handle = store.create({"a": 1, "b": 2}, None)
    one = store.load(handle.session_id)
    two = store.load(handle.session_id)
    assert one is not None and two is not None
    one["a"] = "from one"
    two["b"] = "from two"
    del two["a"]  # deleting wins only for the key it names...
    store.save(handle.session_id, two)
    store.save(handle.session_id, one)  # ...and a later set brings it back
    assert store.load(handle.session_id) == {"a": "from one", "b": "from two"}


def test_fifty_concurrent_writers_on_one_session_all_survive(store: SessionStore) -> None:
    handle = store.create({"seed": True}, "u")

    def write(i: int) -> None:
        mine = store.load(handle.session_id)
        assert mine is not None
        mine[f"key{i}"] = i
        store.save(handle.session_id, mine)

    run_together(write, 50)
    final = store.load(handle.session_id)
    assert final == {"seed": True, **{f"key{i}": i for i in range(50)}}


def test_modified_true_writes_nested_changes(store: SessionStore) -> None:
    handle = store.create({"cart": [1]}, None)
    handle.session["cart"].append(2)
    store.save(handle.session_id, handle.session)
    assert store.load(handle.session_id) == {"cart": [1]}  # not tracked, like Flask
    handle.session.modified = True
    store.save(handle.session_id, handle.session)
    assert store.load(handle.session_id) == {"cart": [1, 2]}


def test_unencodable_value_writes_nothing_and_keeps_changes_pending(store: SessionStore) -> None:
    handle = store.create({"a": 1}, None)
    handle.session["a"] = 2
    handle.session["bad"] = {1, 2}
    with pytest.raises(SessionValueError, match="'bad'"):
        store.save(handle.session_id, handle.session)
    assert store.load(handle.session_id) == {"a": 1}
    assert handle.session.modified is True


def test_create_refuses_unencodable_http_session(store: SessionStore) -> None:
    with pytest.raises(SessionValueError, match="'obj'"):
        store.create({"obj": object()}, None)


def test_save_to_a_deleted_session_does_not_resurrect_it(store: SessionStore) -> None:
    handle = store.create({"a": 1}, None)
    assert store.delete(handle.session_id) is True
    assert store.delete(handle.session_id) is False
    handle.session["b"] = 2
    with pytest.raises(SessionNotFound, match="no longer exists"):
        store.save(handle.session_id, handle.session)
    assert store.load(handle.session_id) is None


@pytest.mark.parametrize("bad", ["", "short", "../../etc/passwd" * 3, "x" * 32 + ":y", None, 12])
def test_malformed_session_ids(store: SessionStore, bad: object) -> None:
    assert store.load(bad) is None  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionId, match="not a session id"):
        store.save(bad, ForkedSession({"a": 1}))  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionId):
        store.expire(bad)  # type: ignore[arg-type]


def test_unknown_session_loads_as_none(store: SessionStore) -> None:
    assert store.load("A" * 32) is None
    assert store.expire("A" * 32) is False
    assert store.persist("A" * 32) is False


def test_expire_ends_the_session_after_ttl(store: SessionStore) -> None:
    handle = store.create({"a": 1}, None)
    assert store.expire(handle.session_id, ttl=0.2) is True
    assert store.load(handle.session_id) == {"a": 1}
    time.sleep(0.35)
    assert store.load(handle.session_id) is None


def test_persist_after_expire_cancels_the_countdown(store: SessionStore) -> None:
    handle = store.create({"a": 1}, None)
    store.expire(handle.session_id, ttl=0.2)
    assert store.persist(handle.session_id) is True
    time.sleep(0.35)
    assert store.load(handle.session_id) == {"a": 1}
    assert store.persist_many([handle.session_id, "B" * 32]) == 1


@pytest.mark.parametrize("ttl", [0, -1, "10", True])
def test_ttl_must_be_positive_seconds(store: SessionStore, ttl: object) -> None:
    handle = store.create({}, None)
    with pytest.raises(ValueError, match="positive number of seconds"):
        store.expire(handle.session_id, ttl=ttl)  # type: ignore[arg-type]


# -- resume ids -----------------------------------------------------------------


def test_claim_grants_once_then_reports_replay(store: SessionStore) -> None:
    handle = store.create({"a": 1}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    assert len(rid) >= 32 and rid != handle.session_id
    first = store.claim_resume(rid, "alice")
    assert first.granted and first.session_id == handle.session_id
    second = store.claim_resume(rid, "alice")
    assert second.status is ResumeStatus.REPLAYED and second.session_id is None
    counts = store.resume_counts()
    assert counts["granted"] == 1 and counts["replayed"] == 1


def test_the_same_claim_again_is_granted_again_and_no_other(store: SessionStore) -> None:
    # a claim that ran but whose answer was lost (a broken connection, a
    # failover): its retry, with the same token, gets the session; nobody else
    handle = store.create({"a": 1}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    token = new_claim_token()
    assert store.claim_resume(rid, "alice", token).granted
    again = store.claim_resume(rid, "alice", token)
    assert again.granted and again.session_id == handle.session_id
    assert store.claim_resume(rid, "alice").status is ResumeStatus.REPLAYED
    assert store.claim_resume(rid, "alice", new_claim_token()).status is ResumeStatus.REPLAYED
    assert store.load(again.session_id)["a"] == 1


def test_other_identity_is_refused_and_does_not_consume(store: SessionStore) -> None:
    handle = store.create({}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    assert store.claim_resume(rid, "mallory").status is ResumeStatus.IDENTITY_MISMATCH
    assert store.claim_resume(rid, None).status is ResumeStatus.IDENTITY_MISMATCH
    assert store.claim_resume(rid, "alice").granted
    assert store.refusals["identity_mismatch"] == 2


def test_anonymous_matches_only_anonymous(store: SessionStore) -> None:
    handle = store.create({}, None)
    rid = store.issue_resume(handle.session_id, None)
    assert store.claim_resume(rid, "none").status is ResumeStatus.IDENTITY_MISMATCH
    assert store.claim_resume(rid, "").status is ResumeStatus.IDENTITY_MISMATCH
    assert store.claim_resume(rid, None).granted


@pytest.mark.parametrize(
    "forged",
    [None, 123, b"A" * 32, "", "short", "A" * 31 + "!", "A" * 200, "../" * 11, "A" * 32 + "\n"],
    ids=repr,
)
def test_forged_resume_ids_are_malformed(store: SessionStore, forged: object) -> None:
    result = store.claim_resume(forged, None)
    assert result.status is ResumeStatus.MALFORMED and not result.granted
    assert store.refusals["malformed"] == 1


def test_well_formed_but_never_issued_is_unknown(store: SessionStore) -> None:
    assert store.claim_resume("Z" * 32, None).status is ResumeStatus.UNKNOWN
    assert store.refusals == {
        "unknown": 1,
        "replayed": 0,
        "identity_mismatch": 0,
        "malformed": 0,
    }


def test_expired_resume_is_refused(store: SessionStore) -> None:
    handle = store.create({}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    store.expire(handle.session_id, ttl=0.2)
    time.sleep(0.35)
    assert store.claim_resume(rid, "alice").status is ResumeStatus.UNKNOWN


def test_resume_survives_within_ttl_after_disconnect(store: SessionStore) -> None:
    handle = store.create({"a": 1}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    store.expire(handle.session_id)  # the fixture's 1 s
    result = store.claim_resume(rid, "alice")
    assert result.granted
    assert result.session_id is not None and store.load(result.session_id) == {"a": 1}


def test_issuing_a_new_resume_id_invalidates_the_previous(store: SessionStore) -> None:
    handle = store.create({}, "alice")
    old = store.issue_resume(handle.session_id, "alice")
    new = store.issue_resume(handle.session_id, "alice")
    assert store.claim_resume(old, "alice").status is ResumeStatus.UNKNOWN
    assert store.claim_resume(new, "alice").granted


def test_delete_also_removes_the_resume_id(store: SessionStore) -> None:
    handle = store.create({}, None)
    rid = store.issue_resume(handle.session_id, None)
    store.delete(handle.session_id)
    assert store.claim_resume(rid, None).status is ResumeStatus.UNKNOWN


def test_a_session_created_resumable_is_claimed_as_an_issued_one(store: SessionStore) -> None:
    handle, rid = store.create_resumable({"a": [1]}, "alice")
    assert handle.session == {"a": [1]} and handle.session.new
    assert store.load(handle.session_id) == {"a": [1]}
    assert store.claim_resume(rid, "mallory").status is ResumeStatus.IDENTITY_MISMATCH
    store.expire(handle.session_id)  # the countdown moves the resume id along
    result = store.claim_resume(rid, "alice")
    assert result.granted and result.session_id == handle.session_id
    assert store.claim_resume(rid, "alice").status is ResumeStatus.REPLAYED


def test_a_resume_id_issued_after_create_resumable_replaces_it(store: SessionStore) -> None:
    handle, first = store.create_resumable({}, None)
    second = store.issue_resume(handle.session_id, None)
    assert store.claim_resume(first, None).status is ResumeStatus.UNKNOWN
    assert store.claim_resume(second, None).granted
    handle, rid = store.create_resumable({}, None)
    store.delete(handle.session_id)
    assert store.claim_resume(rid, None).status is ResumeStatus.UNKNOWN


def test_reconnected_rearms_the_claimed_id_or_replaces_it(store: SessionStore) -> None:
    handle, rid = store.create_resumable({"a": 1}, "alice")
    store.expire(handle.session_id)
    assert store.claim_resume(rid, "alice").granted
    assert store.reconnected(handle.session_id, "alice", reuse=rid) == rid
    store.expire(handle.session_id)
    assert store.claim_resume(rid, "alice").granted  # re-armed: claimable once more
    fresh = store.reconnected(handle.session_id, "alice")
    assert fresh != rid
    assert store.claim_resume(rid, "alice").status is not ResumeStatus.GRANTED
    assert store.claim_resume(fresh, "mallory").status is ResumeStatus.IDENTITY_MISMATCH
    assert store.claim_resume(fresh, "alice").granted
    with pytest.raises(SessionNotFound):
        store.reconnected("Q" * 32, "alice")


def test_expire_with_a_resume_id_hint_starts_the_same_countdown(store: SessionStore) -> None:
    handle, rid = store.create_resumable({}, "alice")
    assert store.expire(handle.session_id, ttl=0.2, resume_id=rid)
    time.sleep(0.35)
    assert store.claim_resume(rid, "alice").status is ResumeStatus.UNKNOWN
    assert store.load(handle.session_id) is None
    assert not store.expire(handle.session_id, resume_id=rid)


def test_issue_resume_for_missing_session(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound):
        store.issue_resume("Q" * 32, None)


def test_racing_claims_grant_exactly_one(store: SessionStore) -> None:
    for _ in range(50):
        handle = store.create({}, "alice")
        rid = store.issue_resume(handle.session_id, "alice")
        results = run_together(lambda _i, rid=rid: store.claim_resume(rid, "alice"), 2)
        statuses = sorted(r.status.value for r in results)  # type: ignore[attr-defined]
        assert statuses == ["granted", "replayed"]
    assert store.resume_counts()["granted"] == 50


def test_logs_never_hold_a_full_id(store: SessionStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="session_store")
    handle = store.create({}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    store.claim_resume(rid, "bob")
    store.claim_resume(rid, "alice")
    store.claim_resume(rid, "alice")
    text = caplog.text
    assert "refused: identity_mismatch" in text and "refused: replayed" in text
    assert rid not in text and handle.session_id not in text
    assert rid[:6] in text
