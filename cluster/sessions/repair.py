"""Writing a live connection's session back to the store, and telling the
handler when a write-through failed.

The node holding a live connection has the truth about its session: the
forked session, its resume id, its sids, recovery starts and rooms. When
the store has lost any of it (the session expired or was deleted under a
live connection, or a key of it had the wrong type and was cleared), the
whole of it is written back from the connection (:func:`write_back`), so
the client can still resume with everything it was told was saved.

When the store refuses a write (a full Redis, Redis down),
:func:`not_saved` counts it (``session_not_saved``), logs it once per
window, and returns the :class:`session_store.SessionNotSaved` the handler
path raises, so the event's ack never claims a write that did not happen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cluster.sessions import record_writes
from cluster.sessions.connection_state import KeyTypeCleared
from session_store import ForkedSession, SessionNotFound, SessionNotSaved, SessionStoreError, redact
from session_store.quiet_log import QuietLog

if TYPE_CHECKING:
    from cluster.flask_integration.bound_session import BoundSession
    from cluster.sessions.connection_sessions import ConnectionSessions

logger = logging.getLogger("cluster.sessions")

#: one line per window about refused write-throughs, whatever their number
_quiet = QuietLog(logger)


def write_through(sessions: ConnectionSessions, bound: BoundSession, session: Any) -> None:
    """Save a handler's changes (session and rooms) before its ack.

    A session the store lost, or whose keys had the wrong type, is written
    back whole from the connection (:func:`write_back`).

    :raises SessionNotSaved: the store refused the write; the changes stay
        pending and go with the next save.
    """
    store, session_id = sessions.store, bound.session_id
    if store is None or session_id is None:
        return
    try:
        try:
            if isinstance(session, ForkedSession) and session.modified:
                store.save(session_id, session)
            record_writes.flush_rooms(sessions, bound)
        except (SessionNotFound, KeyTypeCleared):
            _quiet.log(logging.WARNING, "lost",
                       "session %s was missing from the store while its connection lived "
                       "(expired, deleted, or cleared for having the wrong type); writing "
                       "it back from the connection", redact(session_id))
            write_back(sessions, bound)
            sessions.counters["sessions_rewritten"] += 1
    except SessionStoreError as exc:
        raise not_saved(sessions, bound, exc) from exc


def write_back(sessions: ConnectionSessions, bound: BoundSession) -> None:
    """Write ``bound``'s session, resume id, record and rooms to the store.

    The session is recreated under its id if the store lost it (else its
    pending changes are saved); the record and the rooms set are replaced
    whole, which also clears keys of the wrong type.

    :raises SessionStoreError: the store refused a write.
    """
    store, state, session_id = sessions.store, sessions.state, bound.session_id
    if store is None or session_id is None:
        return
    session = bound.session
    mark = session.change_mark  # before the copy: later changes stay pending
    if store.restore(session_id, dict(session), bound.identity):
        session.mark_saved(through=mark)
    else:
        store.save(session_id, session)  # it exists: its pending changes
    if bound.resume_id is not None:
        store.issue_resume(session_id, bound.identity, reuse=bound.resume_id)
    bound.take_room_changes()  # all the rooms are written below
    bound.left.clear()  # the record is written whole
    rooms = [(namespace, room) for namespace, names in bound.rooms.items()
             for room in names]
    try:
        state.save(session_id, bound.record(), store.lease_ttl)
        state.replace_rooms(session_id, rooms, store.lease_ttl)
    except SessionStoreError:
        raise
    except Exception as exc:  # redis errors of the connection record
        raise SessionStoreError(f"connection record: {exc}") from exc
    logger.info("session %s written back from its live connection", redact(session_id))


def write_back_logged(sessions: ConnectionSessions, bound: BoundSession) -> None:
    """:func:`write_back` outside a handler: a failure is counted and logged."""
    try:
        write_back(sessions, bound)
        sessions.counters["sessions_rewritten"] += 1
    except SessionStoreError as exc:
        sessions.counters["store_errors"] += 1
        logger.error("could not write session %s back: %s", redact(bound.session_id), exc)


def not_saved(sessions: ConnectionSessions, bound: BoundSession,
              cause: BaseException) -> SessionNotSaved:
    """Count and log (once per window) a refused write-through; the error
    for the handler path."""
    sessions.counters["store_errors"] += 1
    sessions.counters["session_not_saved"] += 1
    session = redact(bound.session_id)
    _quiet.log(logging.ERROR, "not-saved",
               "could not write session %s through before its ack (%s); the event gets no "
               "success ack (SessionNotSaved goes to @socketio.on_error). Free memory in "
               "Redis or raise its maxmemory, or bring it back; socketio_sessions_total"
               "{kind=\"session_not_saved\"} counts these", session, cause)
    error = SessionNotSaved(session, cause)
    error.__cause__ = cause
    return error
