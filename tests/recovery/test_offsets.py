"""Recovery stream offsets: strict parsing, stream order, age, text."""

from __future__ import annotations

import time

import pytest

from cluster.recovery.offsets import MAX_PART, ZERO, InvalidOffset, Offset, is_offset, newer


@pytest.mark.parametrize("text, parts", [
    ("0-0", (0, 0)),
    ("1700000000000-0", (1700000000000, 0)),
    ("1700000000000-42", (1700000000000, 42)),
    (f"{MAX_PART}-{MAX_PART}", (MAX_PART, MAX_PART)),
])
def test_parses_what_redis_writes(text: str, parts: tuple[int, int]) -> None:
    offset = Offset.parse(text)
    assert offset == Offset(*parts)
    assert (offset.ms, offset.seq) == parts
    assert str(offset) == text
    assert Offset.of(text) == offset
    assert is_offset(text)


@pytest.mark.parametrize("text", [
    "", "-", "1", "1-", "-1", "1--1", "-1-0", "1-2-3", " 1-2", "1-2 ", "1-2\n", "+1-2",
    "1.5-2", "0x1-2", "a-b", "01-2", "1-02",
    "١٢-٣",  # Arabic-Indic digits: str.isdigit() says yes, Redis says no
    f"{MAX_PART + 1}-0", f"0-{MAX_PART + 1}", "1" * 21 + "-0",
])
def test_rejects_malformed_negative_and_huge(text: str) -> None:
    assert Offset.parse(text) is None
    assert not is_offset(text)
    with pytest.raises(InvalidOffset) as raised:
        Offset.of(text)
    assert repr(text) in str(raised.value)
    assert "<ms>-<seq>" in str(raised.value)


@pytest.mark.parametrize("value", [None, 12, 1.5, b"1-2", ["1-2"], {"1": 2}])
def test_rejects_what_is_not_text(value: object) -> None:
    assert Offset.parse(value) is None
    with pytest.raises(InvalidOffset):
        Offset.of(value)


def test_invalid_offset_is_a_value_error() -> None:
    # callers that caught the ValueError of int() still catch it
    assert issubclass(InvalidOffset, ValueError)


def test_orders_as_the_stream_does_not_as_text() -> None:
    texts = ["10-0", "9-5", "9-10", "0-0", "100-0", "9-9"]
    ordered = sorted(texts, key=Offset.of)
    assert ordered == ["0-0", "9-5", "9-9", "9-10", "10-0", "100-0"]
    assert Offset.of("9-10") > Offset.of("9-9")
    assert Offset.of("10-0") > Offset.of("9-999")
    assert min(map(Offset.of, texts)) == ZERO


def test_is_immutable_and_hashable() -> None:
    offset = Offset.of("5-6")
    with pytest.raises(AttributeError):
        offset.ms = 7  # type: ignore[misc]
    assert {offset, Offset.of("5-6")} == {Offset(5, 6)}


def test_age_is_measured_from_its_milliseconds() -> None:
    offset = Offset.of("1000-3")
    assert offset.age_ms(now_ms=1500) == 500
    assert offset.age_ms(now_ms=900) == -100  # from the future
    now = int(time.time() * 1000)
    assert 0 <= Offset(now, 0).age_ms() < 60_000  # by the local clock


def test_newer_compares_texts_and_anything_beats_none() -> None:
    assert newer("2-0", "1-9")
    assert not newer("1-9", "2-0")
    assert not newer("3-3", "3-3")
    assert newer("0-0", None)
    with pytest.raises(InvalidOffset):
        newer("bogus", "1-0")
    with pytest.raises(InvalidOffset):
        newer("1-0", "bogus")
