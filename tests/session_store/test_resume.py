"""Resume helpers: ids, redaction, identity digests, results."""

from __future__ import annotations

import pytest

from session_store.resume import (
    ResumeResult,
    ResumeStatus,
    identity_digest,
    is_well_formed_id,
    new_id,
    redact,
)


def test_new_ids_are_192_bit_url_safe_tokens() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and is_well_formed_id(i) for i in ids)


def test_redact_shows_a_short_prefix_only() -> None:
    rid = new_id()
    shown = redact(rid)
    assert shown == rid[:6] + "…" and rid not in shown
    assert redact("abc") == "…"
    assert redact(None) == "<NoneType>" and redact(b"x" * 40) == "<bytes>"
    assert "\n" not in redact("\n\n\n\n\n\n\n\n")


def test_identity_digest_distinguishes_none_and_strings() -> None:
    assert identity_digest(None) == "none"
    assert identity_digest("none") != "none"
    assert identity_digest("a") == identity_digest("a") != identity_digest("b")
    assert "alice" not in identity_digest("alice")


def test_identity_must_be_str_or_none() -> None:
    with pytest.raises(TypeError, match="get_id"):
        identity_digest(42)  # type: ignore[arg-type]


def test_result_repr_redacts_and_granted_flag() -> None:
    sid = new_id()
    result = ResumeResult(ResumeStatus.GRANTED, sid)
    assert result.granted and sid not in repr(result)
    assert not ResumeResult(ResumeStatus.REPLAYED).granted
