"""The invariant checker on hand-made histories (pure Python)."""

from __future__ import annotations

import pytest

from tests.faults.invariants import Away, ClientLog, Sent, assert_clean, check


def _sent(room: str, sender: str, seqs: range, at: float = 10.0, step: float = 1.0,
          acked: bool = True) -> list[Sent]:
    return [Sent(room, sender, seq, at + i * step, acked) for i, seq in enumerate(seqs)]


def _log(name: str = "c1", rooms: dict[str, float] | None = None, **kwargs: object) -> ClientLog:
    log = ClientLog(name, rooms=rooms if rooms is not None else {"r1": 0.0})
    for key, value in kwargs.items():
        setattr(log, key, value)
    return log


def _kinds(log: ClientLog, sent: list[Sent], until: float = 100.0) -> list[str]:
    return [p.kind for p in check([log], sent, until=until)]


def test_a_clean_history_passes() -> None:
    sent = _sent("r1", "s1", range(5)) + _sent("r1", "s2", range(3))
    received = [(m.room, m.sender, m.seq) for m in sorted(sent, key=lambda m: m.at)]
    assert_clean([_log(received=received, whoami=["c1", "c1"])], sent, until=100)


def test_loss_is_reported_as_seq_ranges() -> None:
    sent = _sent("r1", "s1", range(10))
    log = _log(received=[("r1", "s1", s) for s in (0, 1, 5, 9)])
    with pytest.raises(AssertionError) as failure:
        assert_clean([log], sent, until=100)
    text = str(failure.value)
    assert "c1: missing room=r1 sender=s1 seq=2-4,6-8 (6)" in text
    assert "missing: 1" in text


def test_duplicates_and_reordering_are_reported() -> None:
    sent = _sent("r1", "s1", range(3))
    log = _log(received=[("r1", "s1", 0), ("r1", "s1", 2), ("r1", "s1", 1), ("r1", "s1", 2)])
    problems = [str(p) for p in check([log], sent, until=100)]
    assert "c1: duplicate room=r1 sender=s1 seq=2 x2" in problems
    assert "c1: reordered room=r1 sender=s1 seq=1 after 2" in problems


def test_order_is_per_sender_not_across_senders() -> None:
    sent = _sent("r1", "a", range(2)) + _sent("r1", "b", range(2))
    received = [("r1", "b", 0), ("r1", "a", 0), ("r1", "b", 1), ("r1", "a", 1)]
    assert _kinds(_log(received=received), sent) == []


def test_foreign_room_and_phantom_packets() -> None:
    sent = _sent("r2", "s9", range(1))
    log = _log(received=[("r2", "s9", 0), ("r1", "s1", 7)])
    assert sorted(_kinds(log, sent)) == ["foreign", "phantom"]


def test_identity_mismatch() -> None:
    log = _log(received=[], whoami=["c1", "c7"])
    assert [str(p) for p in check([log], [], until=1)] == ["c1: identity whoami answered 'c7'"]


def test_unrecovered_away_excuses_only_its_interval() -> None:
    sent = _sent("r1", "s1", range(10), at=10.0)  # seq n acked at 10 + n
    away = Away(start=13.0, end=15.0, recovered=False)
    got = [("r1", "s1", s) for s in (0, 1, 6, 7, 8, 9)]  # 2..5 lost
    # slack 1 s: 12.0..16.0 excused -> 2,3,4,5,6 may be lost; 2..5 were
    assert check([_log(received=got, away=[away])], sent, until=100, slack=1.0) == []
    # lost outside the window: seq 1 (acked at 11) is not excused
    got_less = [("r1", "s1", s) for s in (0, 6, 7, 8, 9)]
    problems = check([_log(received=got_less, away=[away])], sent, until=100, slack=1.0)
    assert [str(p) for p in problems] == ["c1: missing room=r1 sender=s1 seq=1 (1)"]


def test_recovered_away_excuses_nothing() -> None:
    sent = _sent("r1", "s1", range(10), at=10.0)
    away = Away(start=13.0, end=15.0, recovered=True)
    got = [("r1", "s1", s) for s in (0, 1, 6, 7, 8, 9)]
    problems = check([_log(received=got, away=[away])], sent, until=100)
    assert [str(p) for p in problems] == ["c1: missing room=r1 sender=s1 seq=2-5 (4)"]


def test_never_came_back_excuses_the_rest() -> None:
    sent = _sent("r1", "s1", range(10), at=10.0)
    away = Away(start=13.0, end=None, recovered=None)
    got = [("r1", "s1", s) for s in (0, 1, 2)]
    assert check([_log(received=got, away=[away])], sent, until=100, slack=0.5) == []


def test_unacked_messages_may_be_missing_but_not_doubled() -> None:
    sent = _sent("r1", "s1", range(3)) + _sent("r1", "s1", range(3, 5), at=20, acked=False)
    log = _log(received=[("r1", "s1", s) for s in (0, 1, 2, 4, 4)])
    assert _kinds(log, sent) == ["duplicate"]


def test_messages_before_join_or_after_until_are_not_expected() -> None:
    sent = _sent("r1", "s1", range(10), at=10.0)
    log = _log(rooms={"r1": 12.5}, received=[("r1", "s1", s) for s in (3, 4, 5)])
    assert check([log], sent, until=15.5) == []
    assert [str(p) for p in check([log], sent, until=17.0)] == [
        "c1: missing room=r1 sender=s1 seq=6-7 (2)"]


def test_long_failures_are_cut_short() -> None:
    sent = _sent("r1", "s1", range(1))
    logs = [_log(f"c{i}", received=[]) for i in range(40)]
    with pytest.raises(AssertionError) as failure:
        assert_clean(logs, sent, until=100)
    assert "... and 15 more" in str(failure.value)
    assert len(str(failure.value).splitlines()) == 27
