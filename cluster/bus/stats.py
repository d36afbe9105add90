"""Bus counters exported by ``manager.stats()`` (and so by ``/metrics``).

The names are a stable contract; ``COUNTERS`` and ``GAUGES`` are the complete
list. Counters only grow for the life of the process; gauges are sampled.

Counters
    published             messages written to the bus
    publish_errors        failed publish attempts (a batch, or the part of it
                          the server refused, that will be retried)
    received              raw messages read from the bus, before any check
    dropped_malformed     not JSON, not an object, or fields of the wrong type
                          (this is where a pickle payload ends up)
    dropped_unsigned      no signature while a signing secret is configured
    dropped_bad_signature signature present but wrong
    dropped_replayed      correctly signed but too old, already seen, or
                          sealed before this node started
    dropped_bad_offset    correctly signed but with a recovery offset it was
                          not signed for, or one far from its publish time
    dropped_buffer_full   emits refused because the outage buffer was full
                          (``buffer_size`` messages or ``buffer_bytes`` bytes)
    dropped_unpublished   messages still buffered when the manager closed
    dropped_after_pause   messages still queued when the node was found
                          paused (frozen past ``ping_timeout``): their
                          clients moved on, so they are not published late
    published_unlogged    emits that were to be recovery-logged but went out
                          without an offset: the stream kept refusing the
                          write (Redis at ``maxmemory``) for ``log_retry``
                          seconds; delivered once, not replayable
    delivered_unlogged    recovery-logged emits delivered on this node
                          without their offset (the bus was slow or down;
                          they are logged once it is back)
    own_dropped           this node's own messages back from the bus, dropped
                          by their cleartext header before any decode (not
                          a logged emit waiting here: heartbeats, room
                          changes, emits without recovery, second copies)
    own_returned          this node's own logged emits back from the bus,
                          known by their header and bytes and delivered
                          from the copy held here, without decoding them
    handler_errors        valid messages whose local handling raised
    follow_timeouts       joins that went on before Redis confirmed the
                          room channel's subscription (``FOLLOW_WAIT`` s)
    recovery_stream_resets  keys of the wrong type found at the recovery
                          stream's name, moved aside so that delivery goes on
                          (logged with the fix; recovery across it is lost)
    recovery_windows      windows of the recovery stream read for replays
                          that overlapped (see ``cluster.recovery.shared_window``)
    recovery_shared_scans  replay scans answered from such a window instead
                          of a scan in Redis
    reconnects            successful re-connections after a bus failure:
                          publisher or subscriber, including a subscriber
                          that redis-py reconnected and re-subscribed by
                          itself (e.g. cut at Redis's pub/sub output limit)
    catch_ups             subscription outages after which the recovery
                          stream was read for what the channel carried
                          meanwhile (see ``cluster.bus.catch_up``)
    caught_up             messages read back that way and handed on as live
    catch_up_skipped      live messages skipped as copies of caught-up ones
    catch_up_after_restart  outages across a Redis restart, caught up from the
                          new server's stream (nobody disconnected)
    catch_up_impossible   outages that could not be caught up exactly
                          (stream trimmed, reset or unreadable, the outage
                          past ``max_message_age``, too many messages)
    catch_up_disconnects  local client connections closed after those, so
                          that they recover by themselves
    acks_expired          ack callbacks removed because no answer came in time
    requests_timed_out    cluster-wide queries that ended with a node silent
    lag_samples           messages that contributed to the lag gauges

Gauges
    buffered              messages waiting to be published (incl. outage buffer)
    buffered_bytes        their size in bytes (bounded by ``buffer_bytes``)
    ready                 1 when connected and subscribed, else 0
    live_nodes            nodes (this one included) heard from recently
    pending_acks          ack callbacks waiting for an answer
    lag_seconds           publish-to-receive delay of the last message from
                          another node (wall clocks; assumes synced clocks)
    lag_seconds_max       largest such delay seen
    clock_offset_seconds  the bus server's clock minus this node's, measured
                          each heartbeat (past ``max_clock_skew``: not ready,
                          see ``cluster.bus.clock``)
    followed_channels     room and node channels this node subscribes to
                          besides the common one (see ``cluster.bus.channels``)
"""
from __future__ import annotations

import threading

COUNTERS = (
    "published", "publish_errors", "received", "dropped_malformed",
    "dropped_unsigned", "dropped_bad_signature", "dropped_replayed",
    "dropped_bad_offset", "dropped_buffer_full", "dropped_unpublished", "published_unlogged",
    "delivered_unlogged", "dropped_after_pause", "own_dropped", "own_returned",
    "handler_errors", "follow_timeouts", "recovery_stream_resets",
    "recovery_windows", "recovery_shared_scans", "reconnects", "catch_ups", "caught_up",
    "catch_up_skipped", "catch_up_after_restart", "catch_up_impossible",
    "catch_up_disconnects", "acks_expired", "requests_timed_out", "lag_samples",
)
GAUGES = ("buffered", "buffered_bytes", "ready", "live_nodes", "pending_acks", "lag_seconds",
          "lag_seconds_max", "clock_offset_seconds", "followed_channels")


class BusStats:
    """Thread-safe counters plus the two lag gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {name: 0 for name in COUNTERS}
        self.lag_seconds = 0.0
        self.lag_seconds_max = 0.0

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> float:
        return self._values[name]

    def record_lag(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            self._values["lag_samples"] += 1
            self.lag_seconds = seconds
            if seconds > self.lag_seconds_max:
                self.lag_seconds_max = seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            values = dict(self._values)
            values["lag_seconds"] = round(self.lag_seconds, 6)
            values["lag_seconds_max"] = round(self.lag_seconds_max, 6)
        return values
