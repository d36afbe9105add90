"""The connected lease of each live session: renewed, and restored when lost.

While its connection lives, a session (with its resume id and its
connection record: sids, rooms, recovery start) is stored under a short
*connected lease*, ``session_ttl + interval`` seconds, and the node holding
the connection renews it every ``interval`` seconds (one pipelined round
trip for all its sessions). So:

- after a node crash its sessions are not kept for a day: each expires
  within ``session_ttl`` plus one interval, like a connection that ended;
- a session the store has lost while its connection lives (Redis restarted
  without persistence, was flushed, or evicted the keys) is written back
  from the connection's own copy, with its resume id and rooms, so the
  client can still resume (and recover) at its next reconnect. The
  recovery stream was lost too, so the session's recorded start moves to
  where the stream restarted: a client that comes back with an older
  offset is replayed everything since (it was connected until then).

The renewal also runs as soon as the bus reports a reconnect (checked every
second), since that is when Redis may have come back empty.

The interval defaults to a quarter of ``session_ttl``, between 1 and 30
seconds (30 s for the default 120 s TTL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.recovery import history
from cluster.sessions import repair
from session_store import SessionStoreError, redact

if TYPE_CHECKING:
    from cluster.flask_integration.bound_session import BoundSession
    from cluster.sessions.connection_sessions import ConnectionSessions

logger = logging.getLogger("cluster.sessions")

#: seconds between checks of the bus's reconnect counter
CHECK_EVERY = 1.0
#: sessions renewed per round trip (10,000 connections: 20 round trips)
RENEW_BATCH = 500


def default_interval(session_ttl: float) -> float:
    """A quarter of ``session_ttl``, between 1 and 30 seconds."""
    return max(1.0, min(30.0, session_ttl / 4))


class SessionLeases:
    """Renews this node's live sessions; restores the ones the store lost.

    :param sessions: the node's connection sessions.
    :param interval: seconds between renewals (see :func:`default_interval`).
    :param restart_point: the new start of a restored session's history in
        the recovery stream (``None`` when unknown or without recovery).
    :param reconnects: the bus's reconnect count, to renew right after one.
    :param spawn: starts the renewal task (the server's ``start_background_task``).
    :param sleep: the server's ``sleep``.
    """

    def __init__(self, sessions: ConnectionSessions, interval: float, *,
                 restart_point: Callable[[], str | None], reconnects: Callable[[], int],
                 spawn: Callable[..., Any], sleep: Callable[[float], Any]) -> None:
        self.sessions = sessions
        self.interval = float(interval)
        self._restart_point = restart_point
        self._reconnects = reconnects
        self._spawn = spawn
        self._sleep = sleep
        self._started = False
        self._stopped = False
        # reported with the session counters (``socketio_sessions_total``)
        self.counters = sessions.counters
        for name in ("lease_renewals", "sessions_restored", "lease_errors"):
            self.counters.setdefault(name, 0)

    def start(self) -> None:
        """Start the renewal task (once)."""
        if not self._started:
            self._started = True
            self._spawn(self._run)

    def stop(self) -> None:
        self._stopped = True

    def _run(self) -> None:
        seen_reconnects = self._reconnects()
        waited = 0.0
        while not self._stopped:
            self._sleep(CHECK_EVERY)
            waited += CHECK_EVERY
            reconnects = self._reconnects()
            if waited < self.interval and reconnects == seen_reconnects:
                continue
            seen_reconnects, waited = reconnects, 0.0
            try:
                self.renew()
            except Exception:  # the next round tries again
                self.counters["lease_errors"] += 1
                logger.exception("could not renew the session leases")

    def renew(self) -> int:
        """Renew every live session's lease now; returns how many were restored."""
        sessions = self.sessions
        store, state = sessions.store, sessions.state
        if store is None:
            return 0
        live = dict(sessions.live_bindings())
        if not live:
            return 0
        ids = list(live)
        lost: list[str] = []
        try:
            for start in range(0, len(ids), RENEW_BATCH):
                if start:
                    self._sleep(0)  # serve the node's clients between batches
                batch = ids[start:start + RENEW_BATCH]
                lost += store.renew(batch)
                state.renew(batch, store.lease_ttl)
        except (SessionStoreError, OSError, ConnectionError) as exc:
            self.counters["lease_errors"] += 1
            logger.warning("could not renew %d session lease(s): %s", len(live), exc)
            return 0
        except Exception as exc:  # redis-py errors of the connection records
            self.counters["lease_errors"] += 1
            logger.warning("could not renew %d connection record(s): %s", len(live), exc)
            return 0
        self.counters["lease_renewals"] += 1
        restored = 0
        if lost:
            point = self._restart_point()
            for session_id in lost:
                if self._restore(live[session_id], point):
                    restored += 1
            logger.warning("the session store had lost %d live session(s); %d restored "
                           "from their connections", len(lost), restored)
        self.counters["sessions_restored"] += restored
        return restored

    def _restore(self, bound: BoundSession, start: str | None) -> bool:
        sessions = self.sessions
        store, session_id = sessions.store, bound.session_id
        if store is None or session_id is None:
            return False
        try:
            if sessions.stable_resume_ids:
                history.restart(bound, bound.sids, start)
            # session, resume id, record and rooms, clearing wrong-typed keys
            repair.write_back(sessions, bound)
        except Exception as exc:  # store or redis errors: the next renewal retries
            self.counters["lease_errors"] += 1
            logger.warning("could not restore session %s: %s", redact(session_id), exc)
            return False
        return True
