"""The invariant checker: was anything lost, duplicated, reordered or leaked?

A workload message is ``{room, sender, seq}``, ``seq`` counting per sender.
The checker is given what was sent (:class:`Sent`, with the time the
sender's ack came back, or ``acked=False`` when no ack came: such a message
may or may not have been sent) and, per client, a :class:`ClientLog`:

- the rooms it was in and since when (the ack of its ``join``);
- the intervals it was away (:class:`Away`: from its ``disconnect`` event
  to the moment it was back in its rooms), each with ``recovered`` as the
  client reported it (``None``: it never came back);
- what it received, in order;
- who the server said it was after each (re)connect (``whoami``).

:func:`check` returns :class:`Problem` lines; :func:`assert_clean` raises
one short ``AssertionError`` listing them. The rules, per client:

- **no loss**: every acked message sent to one of its rooms after it joined
  and before the end of the observation arrived, unless it was sent while
  the client was away *and* the client came back with ``recovered=False``
  (the one signal that the server gave the guarantee up). Being away and
  coming back with ``recovered=True`` excuses nothing. The away interval is
  widened by ``slack`` seconds on each side: a client notices a dead link
  only after its ping timeout, and a message acked just before it was back
  in its rooms may have raced the rejoin;
- **no duplicates** of one ``(room, sender, seq)``;
- **order**: per room and sender, ``seq`` only grows;
- **no foreign packets**: nothing from a room it was not in, nothing that
  was never sent;
- **identity**: every ``whoami`` answered its own name.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Away", "ClientLog", "InvariantViolation", "Problem", "Sent", "assert_clean", "check",
           "summary"]

Key = tuple[str, str, int]  # room, sender, seq
#: how many problems the assertion message lists before "... and N more"
SHOWN = 25


class InvariantViolation(AssertionError):
    """The checker's verdict (an ``AssertionError``, so that a scenario can
    expect exactly this failure and not a broken harness)."""


@dataclass(frozen=True)
class Sent:
    room: str
    sender: str
    seq: int
    at: float  # when the sender's ack came back (or when it gave up waiting)
    acked: bool = True

    @property
    def key(self) -> Key:
        return (self.room, self.sender, self.seq)


@dataclass(frozen=True)
class Away:
    start: float
    end: float | None  # None: never came back
    recovered: bool | None  # as the client reported it; None: never came back


@dataclass
class ClientLog:
    name: str
    rooms: dict[str, float] = field(default_factory=dict)  # room -> joined at
    away: list[Away] = field(default_factory=list)
    received: list[Key] = field(default_factory=list)
    whoami: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    client: str
    kind: str  # missing, duplicate, reordered, foreign, phantom, identity
    detail: str

    def __str__(self) -> str:
        return f"{self.client}: {self.kind} {self.detail}"


def _ranges(seqs: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out: list[str] = []
    ordered = sorted(seqs)
    start = prev = ordered[0]
    for seq in ordered[1:] + [None]:  # type: ignore[list-item]
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ",".join(out)


def _excused(log: ClientLog, at: float, until: float, slack: float) -> bool:
    for away in log.away:
        if away.recovered is True:
            continue  # the server claimed it restored everything
        end = until if away.end is None else away.end
        if away.start - slack <= at <= end + slack:
            return True
    return False


def check(clients: Sequence[ClientLog], sent: Sequence[Sent], *, until: float,
          slack: float = 1.0) -> list[Problem]:
    """Every problem found, per client; ``until`` ends the observation
    (messages acked after it are not expected yet)."""
    by_room: dict[str, list[Sent]] = collections.defaultdict(list)
    known: set[Key] = set()
    for message in sent:
        by_room[message.room].append(message)
        known.add(message.key)
    problems: list[Problem] = []
    for log in clients:
        problems += _check_client(log, by_room, known, until, slack)
    return problems


def _check_client(log: ClientLog, by_room: dict[str, list[Sent]], known: set[Key],
                  until: float, slack: float) -> list[Problem]:
    problems = []
    counts = collections.Counter(log.received)
    for (room, sender, seq), count in sorted(counts.items()):
        if count > 1:
            problems.append(Problem(log.name, "duplicate",
                                    f"room={room} sender={sender} seq={seq} x{count}"))
    last: dict[tuple[str, str], int] = {}
    for room, sender, seq in log.received:
        if room not in log.rooms:
            problems.append(Problem(log.name, "foreign",
                                    f"room={room} (not its room) sender={sender} seq={seq}"))
        elif (room, sender, seq) not in known:
            problems.append(Problem(log.name, "phantom",
                                    f"room={room} sender={sender} seq={seq} was never sent"))
        previous = last.get((room, sender))
        if previous is not None and seq < previous:
            problems.append(Problem(log.name, "reordered",
                                    f"room={room} sender={sender} seq={seq} after {previous}"))
        last[(room, sender)] = max(seq, previous if previous is not None else seq)
    missing: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for room, joined in log.rooms.items():
        for message in by_room.get(room, ()):
            if (not message.acked or message.at < joined or message.at > until
                    or message.key in counts or _excused(log, message.at, until, slack)):
                continue
            missing[(room, message.sender)].append(message.seq)
    for (room, sender), seqs in sorted(missing.items()):
        problems.append(Problem(log.name, "missing",
                                f"room={room} sender={sender} seq={_ranges(seqs)} "
                                f"({len(seqs)})"))
    for name in log.whoami:
        if name != log.name:
            problems.append(Problem(log.name, "identity", f"whoami answered {name!r}"))
    return problems


def summary(clients: Sequence[ClientLog], sent: Sequence[Sent]) -> str:
    """One line: how much the verdict rests on."""
    received = sum(len(c.received) for c in clients)
    aways = [a for c in clients for a in c.away]
    recovered = sum(1 for a in aways if a.recovered is True)
    lost = sum(1 for a in aways if a.recovered is False)
    return (f"{len(clients)} clients, {len(sent)} sent "
            f"({sum(1 for s in sent if not s.acked)} unacked), {received} received, "
            f"{len(aways)} away ({recovered} recovered, {lost} told not recovered)")


def assert_clean(clients: Sequence[ClientLog], sent: Sequence[Sent], *, until: float,
                 slack: float = 1.0) -> None:
    """Raise :class:`InvariantViolation` with a short diff if :func:`check` finds anything."""
    problems = check(clients, sent, until=until, slack=slack)
    if not problems:
        return
    kinds = collections.Counter(p.kind for p in problems)
    lines = [f"invariants violated ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}; "
             f"{summary(clients, sent)})"]
    lines += [f"  {p}" for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  ... and {len(problems) - SHOWN} more")
    raise InvariantViolation("\n".join(lines))
