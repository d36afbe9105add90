"""Log a recurring problem once per window, not once per occurrence.

A full Redis refuses every write of every client: a log line per refused
event would flood the node's log exactly when the operator needs it. A
:class:`QuietLog` writes the first occurrence of each kind of problem in a
window, and with the next one says how many were left out meanwhile. The
callers count every occurrence in a metric, so nothing is lost but lines.

It is the one such throttle of the project: the node (``cluster``) uses it
for what clients cause (malformed packets, unknown ACKs, handler errors) as
well as for what Redis refuses. ``kind`` must come from the code, never from
a client (an event name, a namespace), so the set of kinds stays bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["QuietLog"]

#: seconds between two lines about the same kind of problem
DEFAULT_WINDOW = 60.0


class QuietLog:
    """At most one line per ``kind`` per ``window`` seconds on ``logger``."""

    def __init__(self, logger: logging.Logger, window: float = DEFAULT_WINDOW) -> None:
        self.logger = logger
        self.window = float(window)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: Any,
            exc_info: Any = None) -> bool:
        """Log ``message % args`` unless ``kind`` was logged in this window;
        returns whether a line was written. ``exc_info`` is passed on with the
        line that is written (so a traceback appears once per window)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.window:
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return False
            self._last[kind] = now
            left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += " (%d more like it since the last such line)"
            args = (*args, left_out)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
