"""session_store.claim_counts: counted and logged claim outcomes, rejected records."""

from __future__ import annotations

import logging
import threading

import pytest

from session_store.claim_counts import ClaimCounts
from session_store.resume import REFUSALS, ResumeStatus


def test_every_status_is_present_from_the_start() -> None:
    counts = ClaimCounts()
    assert counts.by_status() == {s.value: 0 for s in ResumeStatus}
    assert counts.refusals() == {s.value: 0 for s in REFUSALS}
    assert "granted" not in counts.refusals()
    assert counts.rejected == 0


def test_a_refusal_is_counted_logged_redacted_and_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counts = ClaimCounts()
    caplog.set_level(logging.WARNING, logger="session_store")
    result = counts.refuse(ResumeStatus.REPLAYED, "r" * 32)
    assert result.status is ResumeStatus.REPLAYED and not result.granted
    assert counts.refusals()["replayed"] == 1
    assert "refused: replayed" in caplog.text and "r" * 32 not in caplog.text


def test_a_rejected_record_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    counts = ClaimCounts()
    caplog.set_level(logging.WARNING, logger="session_store")
    counts.reject("session %s: value %r failed its MAC check", "abc…", "k")
    assert counts.rejected == 1
    assert "failed its MAC check" in caplog.text and "treated as missing" in caplog.text


def test_counts_from_many_threads_add_up() -> None:
    counts = ClaimCounts()

    def count() -> None:
        for _ in range(500):
            counts.count(ResumeStatus.GRANTED)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts.by_status()["granted"] == 4000
