"""One read of the recovery stream shared by the replays that run at once.

When a node dies its clients come back to the others all at once, and each
plans a replay from an offset a few seconds old. Scanned one by one in
Redis (:data:`.scripts.SCAN`), each replay looks at every entry logged
since its offset, the same entries for all of them. Measured in issue 29's
storm (3,000 clients of a SIGKILLed node back on two nodes, 225 emits/s),
those scans kept Redis busy 26 s out of 30, at 2-7 ms a call, and the last
client was back 37 s after the kill.

So while replays overlap, a node reads the stream's recent entries once
into a :class:`SharedWindow`, opens each once (signature checked), indexes
them by namespace and target, and answers each client's scan from memory
by its own names (its sid and rooms): a replay's cost again follows its
client's own history, and Redis serves one read per batch of scans. The
window gives the same entries the scan script would, by the same routing
fields (:mod:`.routing`), and :func:`.replay.read_replay` still matches
each in full.

It stays exact:

- every scan first waits for a read of the stream's new entries that began
  after the scan did (scans that arrive while a read runs share the next
  one), so it sees everything logged before it began, as a scan in Redis
  does; the tail read after a recovering client's rooms went live depends
  on this;
- the window is contiguous: it grows at its end by reading after its last
  entry, and, for an older offset, at its start by reading up to its first;
- whether a client's offset can be trusted (in the stream, nothing trimmed
  after it) is still asked of Redis before any scan
  (:func:`.replay.trustworthy_offset`), so the window's entries after a
  trusted offset are the stream's;
- when its last entry is gone from the stream (a reset, a Redis that came
  back empty) the window is dropped and read anew.

It holds the newest ``max_entries`` entries at most (default 20,000), and
only while scans keep coming (:class:`ScanSharing`); for an offset it
cannot reach (older than what it holds, or the stream unreadable) the
caller scans in Redis as before.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cluster.recovery.offsets import Offset
from cluster.recovery.routing import UNREACHABLE, ScanPage, scan_members
from cluster.recovery.stream import WindowEntry

__all__ = ["DEFAULT_MAX_ENTRIES", "ScanSharing", "SharedWindow", "WindowRead"]

#: entries a window holds at most
DEFAULT_MAX_ENTRIES = 20_000
#: entries one read asks Redis for at most
READ_COUNT = 2_000
#: how far before a client's offset the window starts when it grows at its
#: start, in milliseconds: the clients of a storm carry offsets a few
#: seconds apart, and one read for the lot beats one per client
START_MARGIN_MS = 5_000
#: seconds without a scan after which a window is dropped
IDLE_SECONDS = 2.0

#: reads entries after an offset (up to another, when given) and returns
#: them with the stream's length; None when the stream could not be read
WindowRead = Callable[[str, "str | None", int], "tuple[list[WindowEntry], int] | None"]


class SharedWindow:
    """Recent entries of the recovery stream, indexed for many scans (see
    the module doc). Safe to use from many green threads."""

    def __init__(self, read: WindowRead, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._read = read
        self.max_entries = max_entries
        #: where the window starts (exclusive): no entry in it is older
        self._start: Offset | None = None
        self._entries: list[WindowEntry] = []
        self._keys: list[Offset] = []
        self._length = 0
        self._index: dict[tuple[str, str], list[int]] = {}
        self._everyone: dict[str, list[int]] = {}
        self._unrouted: list[int] = []
        self._lock = threading.Lock()
        self._reads_started = 0
        self._reads_done = 0
        #: the newest offset found too far back to hold: older ones are not tried
        self._unreachable: Offset | None = None

    def __len__(self) -> int:
        """Entries held."""
        return len(self._entries)

    def scan(self, offset: str, namespace: str, sid: str, rooms: Iterable[Any]
             ) -> ScanPage | None:
        """The entries after ``offset`` that may reach ``sid`` (in
        ``namespace``, a member of ``rooms``), up to the stream's end when
        the scan began, in one page; None when the window cannot answer
        (the stream unreadable, or the offset out of its reach)."""
        start = Offset.parse(offset)
        if start is None:
            return None
        if not self._caught_up(start) or self._start is None or start < self._start:
            return None
        entries, keys = self._entries, self._keys
        first = bisect_right(keys, start)
        names = {sid, *scan_members(sid, rooms)}
        lists = [self._everyone.get(namespace, ()), self._unrouted,
                 *(self._index.get((namespace, name), ()) for name in names)]
        positions: set[int] = set()
        for found in lists:
            positions.update(found[bisect_left(found, first):])
        page = []
        for position in sorted(positions):
            entry = entries[position]
            if entry.route is not None and sid in entry.route.skipped:
                continue
            page.append((entry.offset, entry.message, entry.size))
        last = entries[-1].offset if first < len(entries) else offset
        return ScanPage(page, last, len(entries) - first, self._length, True)

    def _caught_up(self, start: Offset) -> bool:
        """Read what was logged since this call began (shared with the calls
        waiting meanwhile), and what the window lacks after ``start``;
        False when it cannot be."""
        arrived = self._reads_started
        with self._lock:
            if self._start is None:
                # a new window: its first read goes to the stream's end
                self._reads_started += 1
                covered = self._grow_start(start)
                if self._start is not None:  # read to the end (maybe not back to start)
                    self._reads_done = self._reads_started
                return covered
            if start < self._start and not self._grow_start(start):
                return False
            if self._reads_done > arrived:
                return True  # a read that began after this call succeeded
            self._reads_started += 1
            if not self._grow_end():
                # not done: the calls that waited for it read again themselves
                return False
            self._reads_done = self._reads_started
            return True

    def _grow_end(self) -> bool:
        """Read the entries logged after the window's last one, up to the
        stream's end."""
        while True:
            if not self._entries:
                read = self._read(str(self._start), None, READ_COUNT)
                if read is None:
                    return False
                new, self._length = read
                more = len(new) == READ_COUNT
            else:
                # from the window's last entry on, included: that it is
                # still there says the stream was not reset under it
                last = self._entries[-1].offset
                read = self._read(_before(last), None, READ_COUNT + 1)
                if read is None:
                    return False
                got, self._length = read
                if not got or got[0].offset != last:
                    self._drop()
                    return False
                new, more = got[1:], len(got) == READ_COUNT + 1
            if len(self._entries) + len(new) > self.max_entries:
                # the oldest go, a quarter at once (each time re-indexes
                # the lot): offsets before them are scanned in Redis
                entries = self._entries + new
                keep = self.max_entries * 3 // 4
                dropped = entries[-keep - 1]
                self._start = self._unreachable = Offset.of(dropped.offset)
                self._set(entries[-keep:])
            elif new:
                self._extend(new)
            if not more:
                return True

    def _grow_start(self, start: Offset) -> bool:
        """Make the window start a margin before ``start``, reading what it
        lacks (a new window: up to the stream's end, keeping the newest
        ``max_entries``). False when ``start`` stays out of its reach."""
        if self._unreachable is not None and not start > self._unreachable:
            return False  # tried already: too far back to hold
        begin = Offset(max(0, start.ms - START_MARGIN_MS), 0)
        until = str(self._start) if self._start is not None else None
        room = self.max_entries - len(self._entries)
        older: list[WindowEntry] = []
        cursor = str(begin)
        while True:
            read = self._read(cursor, until, READ_COUNT)
            if read is None:
                return False
            got, self._length = read
            older += got
            if len(older) > room:
                if until is not None:
                    # the window stays as it is; this offset and older ones
                    # are scanned in Redis
                    self._unreachable = start
                    return False
                # a new window keeps the newest entries
                begin = Offset.of(older[-room - 1].offset)
                older = older[-room:]
                self._unreachable = start
            if len(got) < READ_COUNT:
                break
            cursor = got[-1].offset
        # (begin, start] then (start, end]: the entry at the old start, if
        # any, is among the ones just read
        self._start = begin
        self._set(older + self._entries)
        return not start < begin

    def _set(self, entries: list[WindowEntry]) -> None:
        """Replace the entries and index them anew."""
        self._entries, self._keys = [], []
        self._index, self._everyone, self._unrouted = {}, {}, []
        self._extend(entries)

    def _extend(self, entries: list[WindowEntry]) -> None:
        """Append entries newer than all held, and index them. (A scan
        reads the lists without yielding, so appending in place is safe.)"""
        index, everyone, unrouted = self._index, self._everyone, self._unrouted
        position = len(self._entries)
        for entry in entries:
            route = entry.route
            if route is None:
                unrouted.append(position)
            elif route is not UNREACHABLE:
                if route.targets is None:
                    everyone.setdefault(route.namespace, []).append(position)
                else:
                    for name in route.targets:
                        index.setdefault((route.namespace, name), []).append(position)
            position += 1
        self._keys.extend(Offset.of(entry.offset) for entry in entries)
        self._entries.extend(entries)

    def _drop(self) -> None:
        self._start = self._unreachable = None
        self._set([])


def _before(offset: str) -> str:
    """The offset just before ``offset`` (for a read that includes it)."""
    parsed = Offset.of(offset)
    if parsed.seq > 0:
        return str(Offset(parsed.ms, parsed.seq - 1))
    return str(Offset(parsed.ms - 1, 2**64 - 1)) if parsed.ms else "0-0"


class ScanSharing:
    """Decides when scans share a window: from the second scan running at
    once, and for as long as scans keep coming (a lone replay is scanned in
    Redis, where others' traffic stays). A window nobody scanned for
    ``idle`` seconds (default 2) is dropped, by a green thread that watches
    it while it lives (``spawn`` and ``sleep``, the bus's runtime); without
    them, when the last scan running ends.

    :param read: the window's reads (see :data:`WindowRead`).
    """

    def __init__(self, read: WindowRead, max_entries: int = DEFAULT_MAX_ENTRIES,
                 spawn: Callable[..., Any] | None = None,
                 sleep: Callable[[float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, idle: float = IDLE_SECONDS,
                 on_window: Callable[[], Any] = lambda: None) -> None:
        self._read = read
        self._on_window = on_window
        self.max_entries = max_entries
        self._spawn, self._sleep, self._clock, self.idle = spawn, sleep, clock, idle
        self.running = 0
        self.window: SharedWindow | None = None
        self._last_scan = 0.0
        #: windows made, for the metrics and the tests
        self.windows = 0

    @contextmanager
    def scanning(self) -> Iterator[SharedWindow | None]:
        """Count a scan while it runs; yields the window to use, or None
        (scan in Redis)."""
        self.running += 1
        self._last_scan = self._clock()
        if self.window is None and self.running > 1:
            self.window = SharedWindow(self._read, self.max_entries)
            self.windows += 1
            self._on_window()
            if self._spawn is not None and self._sleep is not None:
                self._spawn(self._drop_when_idle, self.window)
        window = self.window
        try:
            yield window
        finally:
            self.running -= 1
            self._last_scan = self._clock()
            if self.running == 0 and self._spawn is None:
                self.window = None

    def _drop_when_idle(self, window: SharedWindow) -> None:
        assert self._sleep is not None
        while self.window is window:
            self._sleep(self.idle)
            if self.running == 0 and self._clock() - self._last_scan >= self.idle:
                if self.window is window:
                    self.window = None
                return
