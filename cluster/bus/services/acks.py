"""Ack callbacks that expire instead of leaking.

python-socketio keeps the callback of an ``emit(..., callback=cb)`` until the
client answers. When the client lives on another node and never answers (it
disconnected, the node died) the callback stays in memory forever. Here every
callback gets a deadline: the manager-wide ``ack_timeout`` (60 s by
default), or its own when wrapped with :func:`with_timeout`, which can also
call you back when it expires::

    socketio.emit("question", data, to=sid,
                  callback=with_timeout(on_answer, 5, on_timeout=on_silence))

The settings travel as the attributes ``ack_timeout`` and ``on_ack_timeout``
of the callable, so a wrapper made with ``functools.wraps`` keeps them.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster import compat
from cluster.bus.stats import BusStats


class TimedAck:
    """An ack callback with its own timeout and an optional expiry hook.

    :param callback: called with the client's ack arguments.
    :param timeout: seconds to wait for the ack.
    :param on_timeout: called with no arguments if no ack came in time.
    """

    def __init__(self, callback: Callable[..., Any], timeout: float,
                 on_timeout: Callable[[], Any] | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.callback = callback
        self.ack_timeout = timeout
        self.on_ack_timeout = on_timeout

    def __call__(self, *args: Any) -> Any:
        return self.callback(*args)


def with_timeout(callback: Callable[..., Any], timeout: float,
                 on_timeout: Callable[[], Any] | None = None) -> TimedAck:
    """Wrap an ack callback so it expires after ``timeout`` seconds."""
    return TimedAck(callback, timeout, on_timeout)


class AckDeadlines:
    """A heap of (deadline, sid, ack id) checked by the manager's ticker."""

    def __init__(self, default_timeout: float | None) -> None:
        self.default_timeout = default_timeout
        self._heap: list[tuple[float, int, Any]] = []
        self._lock = threading.Lock()

    def track(self, sid: Any, ack_id: int, callback: Any) -> None:
        timeout = getattr(callback, "ack_timeout", None) or self.default_timeout
        if not timeout:
            return
        with self._lock:
            heapq.heappush(self._heap,
                           (time.monotonic() + timeout, ack_id, sid))

    def due(self) -> list[tuple[Any, int]]:
        """Pop and return the (sid, ack id) pairs whose deadline passed."""
        now = time.monotonic()
        out = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, ack_id, sid = heapq.heappop(self._heap)
                out.append((sid, ack_id))
        return out


class AckTable:
    """The manager's ack callbacks: numbered, tracked, expired.

    ``callbacks`` is python-socketio's own table (the manager's
    ``callbacks``, which ``trigger_callback`` reads when an ack arrives);
    ids come from one process-wide counter, so they stay unique even after
    an expired sid's table is removed and a late ack cannot hit a newer
    callback.

    :param spawn: runs an expiry hook in a task of its own, errors logged.

    The manager's tick calls :meth:`expire` about four times a second;
    services whose answers expire too (:mod:`.answering`) hook in with
    :meth:`add_chore`, so one tick keeps every deadline of the node.
    """

    def __init__(self, callbacks: dict[Any, Any], default_timeout: float | None,
                 stats: BusStats, spawn: Callable[..., Any]) -> None:
        self.callbacks = callbacks
        self.deadlines = AckDeadlines(default_timeout)
        self.stats = stats
        self.spawn = spawn
        self._ids = itertools.count(1)
        self._chores: list[Callable[[], Any]] = []

    def add_chore(self, chore: Callable[[], Any]) -> None:
        """Run ``chore()`` on every tick, after the expiry of callbacks."""
        self._chores.append(chore)

    def add(self, sid: Any, callback: Any) -> int:
        """File ``callback`` for ``sid``; its ack id."""
        ack_id = compat.register_ack(self.callbacks, sid, self._ids, callback)
        self.deadlines.track(sid, ack_id, callback)
        return ack_id

    def discard(self, sid: Any, ack_id: int) -> None:
        """Forget a callback whose emit was never sent."""
        compat.pop_ack(self.callbacks, sid, ack_id)

    def expire(self) -> None:
        """Drop the callbacks past their deadline, calling their
        ``on_ack_timeout`` hooks; counted in ``acks_expired``."""
        for sid, ack_id in self.deadlines.due():
            callback = compat.pop_ack(self.callbacks, sid, ack_id)
            if callback is None:
                continue
            self.stats.incr("acks_expired")
            on_timeout = getattr(callback, "on_ack_timeout", None)
            if on_timeout is not None:
                self.spawn(on_timeout)
        for chore in self._chores:
            chore()

    def pending(self) -> int:
        """Callbacks still waiting (-1 when unknown for a moment)."""
        return compat.pending_ack_count(self.callbacks)
