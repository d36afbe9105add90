"""session_store.layout: the stored field names, the resume record, TTL units."""

from __future__ import annotations

import json

import pytest

from session_store.layout import (
    DATA,
    META_CREATED,
    META_IDENTITY,
    META_RESUME,
    META_UPDATED,
    META_VERSION,
    parse_resume_record,
    resume_record,
    text,
    ttl_ms,
)
from session_store.resume import ResumeStatus


def test_no_session_key_can_collide_with_metadata() -> None:
    metadata = [META_IDENTITY, META_CREATED, META_UPDATED, META_VERSION, META_RESUME]
    assert len(set(metadata)) == len(metadata)
    assert not any(name.startswith(DATA) for name in metadata)
    # a session key named like a metadata field is still a data field
    assert (DATA + META_RESUME).startswith(DATA)


@pytest.mark.parametrize(("seconds", "ms"), [(120, 120_000), (0.0001, 1), (1.5, 1500)])
def test_ttl_ms_rounds_to_at_least_one_millisecond(seconds: float, ms: int) -> None:
    assert ttl_ms(seconds, "ttl") == ms


@pytest.mark.parametrize("seconds", [0, -1, "10", True, None])
def test_ttl_ms_refuses_what_is_not_a_positive_number(seconds: object) -> None:
    with pytest.raises(ValueError, match="lease_ttl must be a positive number of seconds"):
        ttl_ms(seconds, "lease_ttl")  # type: ignore[arg-type]


def test_text_decodes_what_redis_answers() -> None:
    assert text(b"d:key") == "d:key" == text("d:key")


def test_a_resume_record_round_trips_with_and_without_a_tag() -> None:
    plain = resume_record("s" * 32, "none")
    assert json.loads(plain) == {"s": "s" * 32, "i": "none"}
    assert parse_resume_record(plain, "none") == (ResumeStatus.GRANTED, "s" * 32, None)
    tagged = resume_record("s" * 32, "none", "t" * 22)
    assert parse_resume_record(tagged.encode(), "none") == (ResumeStatus.GRANTED, "s" * 32,
                                                            "t" * 22)


def test_a_record_for_another_identity_or_damaged_is_refused() -> None:
    record = resume_record("s" * 32, "sha256:ab")
    assert parse_resume_record(record, "none")[0] is ResumeStatus.IDENTITY_MISMATCH
    for damaged in ("", "[]", "{", '{"s": "x"}', b"\xff"):
        assert parse_resume_record(damaged, "none") == (ResumeStatus.MALFORMED, None, None)
    # a tag that is not a string is no tag
    odd = json.dumps({"s": "s" * 32, "i": "none", "m": 7})
    assert parse_resume_record(odd, "none") == (ResumeStatus.GRANTED, "s" * 32, None)
