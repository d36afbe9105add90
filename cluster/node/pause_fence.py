"""Fencing after a pause: what a frozen node read before it froze is not acted on.

A node stopped for longer than its clients wait for it (SIGSTOP, a frozen
VM, a swap storm) wakes up with its clients gone: they stopped hearing
pings, reconnected through the balancer to other nodes and resumed their
sessions there. The kernel still holds what they sent before giving up:
websocket frames and polling POSTs the node never read. Acting on those
after waking would deliver a message long after the ones its sender sent
since through its new node (out of order in the room), and run handlers
for a session another node now holds.

So the node watches its own progress: a background task ticks every
:data:`TICK` seconds, and a gap of at least ``ping_timeout`` between two
ticks (or between the last tick and a packet's arrival, whichever is seen
first) means the process did not run for that long. A client can have
given up after ``ping_timeout`` of silence at the earliest (its last ping
may have come a whole ``ping_interval`` before the pause), so every
connection opened before such a gap is *fenced*: its next packet is not
received and the connection is closed unread, as if the client's close had
been read first. The client has reconnected, or will, and resumes its
session. Connections opened after the gap are not affected.

Waiting for a fenced connection's next packet is not enough: a client
that gave up may never send on it again, nor even close it (python-engineio's
client leaves its socket to the garbage collector), and until it is closed
its session counts as held by a live connection here, so the client's
resume on another node is refused. So the moment a pause is found,
``on_pause`` (set by the engine) is told, which marks every connection
opened before it at once and closes them (see
:meth:`~.engine.ClusterEngineServer.close_fenced`).

A node so overloaded that its event loop stalls for ``ping_timeout`` is
fenced the same way: its clients' pings were overdue by then too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("cluster.transport")

#: seconds between two ticks of the watch: a pause is measured to within this
TICK = 0.5


class PauseFence:
    """Detects the node's pauses and tells which connections they fenced.

    :param threshold: the shortest gap that counts as a pause (the engine's
        ``ping_timeout``).
    :param spawn: starts the ticking task (the server's ``start_background_task``).
    :param sleep: the server's ``sleep``.
    :param counters: where ``pauses_detected`` and ``connections_fenced``
        are counted (the server's counters, reported as metrics).
    :param clock: monotonic seconds (``time.monotonic``).
    """

    def __init__(self, threshold: float, *, spawn: Callable[..., Any],
                 sleep: Callable[[float], Any], counters: dict[str, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = float(threshold)
        self._spawn = spawn
        self._sleep = sleep
        self._clock = clock
        self._last_tick = clock()
        self._started = False
        #: when the last pause was found (monotonic); nothing before it
        #: that is still unsent is acted on (see :meth:`paused_since`)
        self.detected_at = float("-inf")
        #: how many pauses were seen: a connection opened at an earlier
        #: generation than the current one is fenced
        self.generation = 0
        self.counters = counters
        #: called with the new generation when a pause is found (in the
        #: green thread that found it: it must not block)
        self.on_pause: Callable[[int], Any] | None = None
        for name in ("pauses_detected", "connections_fenced"):
            counters.setdefault(name, 0)

    def start(self) -> None:
        """Start the ticking task (once; later calls do nothing)."""
        if not self._started:
            self._started = True
            self._last_tick = self._clock()
            self._spawn(self._run)

    def _run(self) -> None:
        while True:
            self._sleep(TICK)
            self.check()

    def check(self) -> int:
        """Note that the node runs now; returns the current generation,
        a new one when the node did not run for ``threshold`` seconds."""
        now = self._clock()
        gap = now - self._last_tick
        self._last_tick = now
        if self._started and gap >= self.threshold:
            self.generation += 1
            self.detected_at = now
            self.counters["pauses_detected"] += 1
            logger.warning(
                "this node did not run for %.1f s (ping_timeout is %.1f s): it was paused "
                "(SIGSTOP, a frozen VM) or starved of CPU. Its clients have given up on "
                "it, so what they sent before the pause is discarded and their "
                "connections from before it are closed; they resume their sessions on "
                "reconnecting.", gap, self.threshold)
            if self.on_pause is not None:
                self.on_pause(self.generation)
        return self.generation

    def paused_since(self, moment: float) -> bool:
        """Whether a pause was found after monotonic time ``moment``: work
        queued before it (an emit waiting in the bus's outbox) belongs to
        clients that have moved on, and is dropped rather than done late.

        "Before the pause was found" rather than "before it began": a tick
        only bounds when the process stopped, and everything queued before
        it stopped counts. Work queued after waking but before the first
        check (which every new connection makes) is dropped with it.
        """
        self.check()
        return moment < self.detected_at

    def fenced(self, opened_at: int) -> bool:
        """Whether a connection opened at generation ``opened_at`` is fenced
        (checks the clock first, so the first packet after a pause is caught
        even before the ticking task has run); counts it when it is."""
        if self.check() == opened_at:
            return False
        self.counters["connections_fenced"] += 1
        return True
