"""Offsets of the recovery stream: ``"<ms>-<seq>"``, as Redis assigns them.

An offset is a Redis stream entry id: the milliseconds of the Redis clock
when the entry was appended and a sequence number within that millisecond,
both unsigned 64-bit integers. Offsets travel as strings (on the wire, in
the bus's messages, in Redis); :class:`Offset` is what the code reads them
into to check, order and age them, in one place.

Parsing is strict because offsets come from clients: only ASCII digits, no
sign, no whitespace, no leading zero, each part at most 2**64 - 1 (what Redis accepts).
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

__all__ = ["Offset", "InvalidOffset", "ZERO", "is_offset", "newer"]

#: the largest part Redis accepts in a stream id
MAX_PART = 2 ** 64 - 1

# canonical decimal, as Redis writes them: no sign, no leading zero
_SHAPE = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})", re.ASCII)


class InvalidOffset(ValueError):
    """Text that is not a recovery stream offset (``"<ms>-<seq>"``)."""


class Offset(NamedTuple):
    """One recovery stream offset; compares in stream order.

    A named tuple: immutable, hashable, and ordered by ``(ms, seq)``, the
    order Redis gives the entries.
    """

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: Any) -> Offset | None:
        """The offset ``text`` spells, or ``None`` for anything else
        (not a string, malformed, negative, past 64 bits)."""
        if not isinstance(text, str):
            return None
        match = _SHAPE.fullmatch(text)
        if match is None:
            return None
        ms, seq = int(match[1]), int(match[2])
        if ms > MAX_PART or seq > MAX_PART:
            return None
        return cls(ms, seq)

    @classmethod
    def of(cls, text: Any) -> Offset:
        """The offset ``text`` spells.

        :raises InvalidOffset: when it spells none (see :meth:`parse`).
        """
        offset = cls.parse(text)
        if offset is None:
            raise InvalidOffset(
                f"not a recovery offset: {text!r} (expected '<ms>-<seq>', two unsigned "
                f"64-bit integers, as Redis stream ids are)")
        return offset

    def age_ms(self, now_ms: int | None = None) -> int:
        """Milliseconds since the entry was appended (by the local clock,
        unless ``now_ms`` is given); negative for an offset from the future."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        return now_ms - self.ms

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


#: the offset before every entry (the start of a session on an empty stream)
ZERO = Offset(0, 0)


def is_offset(text: Any) -> bool:
    """Whether ``text`` is a well-formed offset."""
    return Offset.parse(text) is not None


def newer(offset: str, than: str | None) -> bool:
    """Whether offset ``offset`` comes after ``than`` (anything comes after
    ``None``).

    :raises InvalidOffset: when either is not an offset.
    """
    if than is None:
        return True
    return Offset.of(offset) > Offset.of(than)
