"""MemorySessionStore specifics: a controllable clock, bounded memory."""

from __future__ import annotations

from session_store import MemorySessionStore, ResumeStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_expiry_follows_the_clock() -> None:
    clock = FakeClock()
    store = MemorySessionStore(ttl=10, lease_ttl=100, tombstone_ttl=5, clock=clock)
    handle = store.create({"a": 1}, None)
    rid = store.issue_resume(handle.session_id, None)
    clock.now += 99
    assert store.load(handle.session_id) == {"a": 1}  # still within the lease
    store.expire(handle.session_id)
    clock.now += 9.9
    assert store.load(handle.session_id) == {"a": 1}
    clock.now += 0.2
    assert store.load(handle.session_id) is None
    assert store.claim_resume(rid, None).status is ResumeStatus.UNKNOWN


def test_tombstone_expires_into_unknown() -> None:
    clock = FakeClock()
    store = MemorySessionStore(tombstone_ttl=5, clock=clock)
    handle = store.create({}, None)
    rid = store.issue_resume(handle.session_id, None)
    assert store.claim_resume(rid, None).granted
    clock.now += 4
    assert store.claim_resume(rid, None).status is ResumeStatus.REPLAYED
    clock.now += 2
    assert store.claim_resume(rid, None).status is ResumeStatus.UNKNOWN


def test_expired_entries_are_swept() -> None:
    clock = FakeClock()
    store = MemorySessionStore(lease_ttl=1, clock=clock)
    for _ in range(300):
        store.create({"x": 1}, None)
    clock.now += 2
    for _ in range(300):
        store.create({"x": 1}, None)
    # The sweep ran at least once after the first batch expired.
    assert len(store._sessions) < 600
