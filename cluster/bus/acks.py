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
import threading
import time
from typing import Any
from collections.abc import Callable


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
