"""How many Socket.IO CONNECTs a node works on at once.

A CONNECT is the dearest packet a node handles: it binds a forked session
(Redis reads, a resume id claimed), may plan and read a recovery replay,
runs the connect handler and persists the session and the connection
record. When a node dies, all its clients come back at once to the others:
3,000 CONNECTs in a few seconds on a node measured what happens without a
bound. Every one of them was started; each took its turn on the CPU between
its Redis round trips, so each waited seconds for the next; the session
store's 100 connections were all held by CONNECTs waiting for the CPU, and
the others failed after ``POOL_WAIT`` with "No connection available" and got
a new session instead of their own (their recovery lost), while the
clients already connected waited seconds for their messages.

So at most ``max_concurrent_connects`` (default 32) are worked on at once
(the session bound, a replay planned, the connect handler run; the wait for
the rooms' subscriptions before the CONNECT reply is not work, and the slot
is given back before it);
the others wait, in arrival order as the semaphore serves them, costing
nothing but their socket. Each admitted one then finishes in milliseconds,
and the node serves its connected clients in between. A CONNECT that waits
longer than ``connect_timeout`` is not refused (a CONNECT_ERROR would stop
socket.io-client for good): its connection is closed, and the client
reconnects after its back-off with its session and offset intact. Counted:
``connects_queued``, ``connect_queue_timeouts``; ``connects_waiting`` is the
queue's length now.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ConnectAdmission:
    """A bounded number of CONNECTs in progress (see the module doc).

    The semaphore is :mod:`threading`'s: the node's green-thread library
    patches it, so a waiting CONNECT blocks only its own green thread.

    :param limit: CONNECTs worked on at once.
    :param counters: the server's counters, where waits and time-outs count.
    """

    def __init__(self, limit: int, counters: dict[str, int]) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._counters = counters
        counters.setdefault("connects_queued", 0)
        counters.setdefault("connect_queue_timeouts", 0)
        #: CONNECTs waiting for a slot now
        self.waiting = 0

    @contextmanager
    def admitted(self, timeout: float) -> Iterator[Slot | None]:
        """Hold a slot for the ``with`` block (or until its
        :meth:`Slot.release`); None when none freed up within ``timeout``
        seconds (nothing is held)."""
        if not self._slots.acquire(blocking=False):
            self._counters["connects_queued"] += 1
            self.waiting += 1
            try:
                got = self._slots.acquire(timeout=timeout)
            finally:
                self.waiting -= 1
            if not got:
                self._counters["connect_queue_timeouts"] += 1
                yield None
                return
        slot = Slot(self._slots.release)
        try:
            yield slot
        finally:
            slot.release()


class Slot:
    """One admitted CONNECT's place; given back once, early or at the end."""

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], object]) -> None:
        self._give_back: Callable[[], object] | None = give_back

    def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()
