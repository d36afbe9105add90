"""Closing Engine.IO connections that never become Socket.IO connections.

An Engine.IO handshake costs the node a socket, an environ and buffers
(~68 KB measured) before the client has said who it is. socket.io closes a
connection that has not sent a Socket.IO CONNECT within ``connectTimeout``
(45 s); so does this node (``connect_timeout``), and it also closes:

- a connection whose only CONNECT was refused (wrong credentials, unknown
  namespace), a moment after the CONNECT_ERROR went out (``REFUSED_GRACE``,
  so the client reads why before the socket closes);
- a connection that disconnected from its last namespace but keeps the
  Engine.IO session open: it gets ``connect_timeout`` again to CONNECT.

One sweeper task serves the whole node, instead of a timer or a green
thread per connection: it runs only while some connection is waiting, wakes
every ``interval`` seconds and looks only at the waiting connections (the
connected ones are not tracked at all). It is started through the server's
``start_background_task``, so it is a green thread under eventlet or
gevent and a daemon thread in threading mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("cluster.node.server")

#: seconds between a refused CONNECT's CONNECT_ERROR and the close
REFUSED_GRACE = 1.0


class ConnectDeadlines:
    """Deadlines of Engine.IO connections waiting for a Socket.IO CONNECT.

    :param timeout: seconds a new connection has to CONNECT.
    :param close: ``close(eio_sid, reason)`` closes one connection; called
        from the sweeper task.
    :param spawn: starts the sweeper (the server's ``start_background_task``).
    :param sleep: sleeps in the server's async mode (the server's ``sleep``).
    """

    def __init__(self, timeout: float, close: Callable[[str, str], None],
                 spawn: Callable[..., Any], sleep: Callable[[float], Any]) -> None:
        self.set_timeout(timeout)
        self._close = close
        self._spawn = spawn
        self._sleep = sleep
        self._lock = threading.Lock()
        self._deadlines: dict[str, tuple[float, str]] = {}
        self._sweeping = False
        self.closed_count = 0

    def set_timeout(self, timeout: float) -> None:
        """Seconds new connections get (those waiting keep their deadline)."""
        self.timeout = float(timeout)
        # wake often enough that a deadline is not overshot by more than a
        # quarter of the timeout, and never less than once a second
        self.interval = min(1.0, max(0.05, self.timeout / 4))

    def __len__(self) -> int:
        return len(self._deadlines)

    def waiting(self, eio_sid: str) -> bool:
        return eio_sid in self._deadlines

    # -- events of a connection ------------------------------------------------

    def opened(self, eio_sid: str) -> None:
        """A new Engine.IO connection: it has ``timeout`` seconds to CONNECT."""
        self._arm(eio_sid, time.monotonic() + self.timeout, "no Socket.IO CONNECT")

    def left_every_namespace(self, eio_sid: str) -> None:
        """Connected once, now in no namespace: ``timeout`` seconds to CONNECT again."""
        self._arm(eio_sid, time.monotonic() + self.timeout, "no namespace left")

    def refused(self, eio_sid: str) -> None:
        """Its CONNECT was refused and it is in no namespace: close it soon."""
        deadline = time.monotonic() + min(REFUSED_GRACE, self.timeout)
        current = self._deadlines.get(eio_sid)
        if current is None or current[0] > deadline:
            self._arm(eio_sid, deadline, "CONNECT refused")

    def connected(self, eio_sid: str) -> None:
        """It completed a CONNECT: no deadline any more."""
        self._deadlines.pop(eio_sid, None)

    def closed(self, eio_sid: str) -> None:
        self._deadlines.pop(eio_sid, None)

    # -- the sweeper -------------------------------------------------------------

    def _arm(self, eio_sid: str, deadline: float, reason: str) -> None:
        with self._lock:
            self._deadlines[eio_sid] = (deadline, reason)
            start = not self._sweeping
            self._sweeping = True
        if start:
            self._spawn(self._run)

    def expired(self, now: float) -> list[tuple[str, str]]:
        """Take the connections whose deadline has passed (``(eio_sid, reason)``)."""
        with self._lock:
            due = [(sid, reason) for sid, (deadline, reason) in self._deadlines.items()
                   if deadline <= now]
            for sid, _ in due:
                del self._deadlines[sid]
        return due

    def _run(self) -> None:
        while True:
            self._sleep(self.interval)
            for eio_sid, reason in self.expired(time.monotonic()):
                self.closed_count += 1
                try:
                    self._close(eio_sid, reason)
                except Exception:  # one broken socket must not stop the sweeper
                    logger.exception("could not close connection %s", eio_sid[:8])
            with self._lock:
                if not self._deadlines:
                    # nothing waits: the task ends; the next arm starts another
                    self._sweeping = False
                    return
