"""How far this process's clock is from the bus server's, and what to do about it.

Signed bus messages carry their sender's wall-clock time, and receivers
refuse what is older than ``max_message_age`` (60 s) or was sealed before
they started (less ``max_clock_skew``); a logged message's offset is the
recovery stream's id, stamped by the *Redis server's* clock, and receivers
refuse an offset more than ``max_clock_skew`` (2 s) away from the message's
own time. So a node or worker whose clock is off by more than that from
Redis's has its traffic dropped by everyone else (the fault tests showed a
node 5 s ahead losing every room message it sent to other nodes, counted
only as ``dropped_bad_offset``). Keeping clocks within ``max_clock_skew`` of
Redis is the rule; this module makes breaking it explicit:

* at start, the runner and every :class:`workers.Emitter` compare their clock
  with Redis's (``TIME``, halfway through the round trip) and refuse to go
  on with :class:`~.errors.BusClockSkew`, whose message names the skew and
  the fix (:func:`check_offset`);
* while running, the heartbeat measures it again each interval
  (:class:`ClockWatch`): a node whose clock drifted past the bound reports
  not-ready (so the balancer sends it no new clients), logs an error at
  most once a minute, and shows the offset in ``socketio_bus{kind=
  "clock_offset_seconds"}``.

The round trip's half is allowed on top of ``max_clock_skew``: a slow link
must not look like a wrong clock.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cluster.bus.errors import BusClockSkew

__all__ = ["ClockWatch", "check_offset", "measure_offset"]

#: seconds between two log lines about a skewed clock
LOG_EVERY = 60.0


def measure_offset(server_time: Callable[[], float | None],
                   local_time: Callable[[], float] = time.time
                   ) -> tuple[float, float] | None:
    """``(offset, uncertainty)`` in seconds: the server's clock minus ours,
    read halfway through the round trip, and half that round trip (None
    when ``server_time`` cannot tell)."""
    before = local_time()
    server = server_time()
    after = local_time()
    if server is None:
        return None
    return server - (before + after) / 2, max(0.0, after - before) / 2


def skew_message(offset: float, max_skew: float, who: str) -> str:
    """The error text for ``who``'s clock ``offset`` seconds from Redis's."""
    direction = "behind" if offset > 0 else "ahead of"
    return (f"{who}'s clock is {abs(offset):.1f} s {direction} the Redis server's, more than "
            f"max_clock_skew={max_skew:g} s: the other nodes would drop its bus messages "
            f"(too old, or offsets that do not match their time). Synchronise the clocks "
            f"(NTP/chrony on every host, Redis's included), or raise max_clock_skew in "
            f"message_queue_options on every node and worker if the skew is expected.")


def check_offset(offset: float, uncertainty: float, max_skew: float, who: str) -> None:
    """Raise :class:`BusClockSkew` when ``offset`` is surely past ``max_skew``."""
    if abs(offset) - uncertainty > max_skew:
        raise BusClockSkew(skew_message(offset, max_skew, who))


class ClockWatch:
    """The latest measured offset of this node's clock to the bus server's.

    :param max_skew: the bound (``max_clock_skew``).
    """

    def __init__(self, max_skew: float, logger: logging.Logger) -> None:
        self.max_skew = max_skew
        self.logger = logger
        #: server clock minus ours, in seconds (0 until measured)
        self.offset = 0.0
        self.skewed = False
        self._logged_at: float | None = None

    def measure(self, server_time: Callable[[], float | None]) -> None:
        """Measure again; when ``server_time`` cannot tell (None) or fails
        (Redis down: the outage is reported elsewhere), the last verdict stays."""
        try:
            measured = measure_offset(server_time)
        except Exception:  # any driver error: not a clock problem
            return
        if measured is None:
            return
        offset, uncertainty = measured
        self.offset = offset
        try:
            check_offset(offset, uncertainty, self.max_skew, "This node")
        except BusClockSkew as exc:
            self.skewed = True
            now = time.monotonic()
            if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
                self._logged_at = now
                self.logger.error("%s It reports not-ready until its clock is back "
                                  "within the bound.", exc)
            return
        if self.skewed:
            self.logger.warning("This node's clock is back within max_clock_skew=%g s of "
                                "the Redis server's (%+.3f s); ready again", self.max_skew,
                                offset)
        self.skewed = False
