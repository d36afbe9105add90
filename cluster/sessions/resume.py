"""Binding a connecting client to its session: a new fork, or a resume.

A CONNECT that carries a resume id (``pid``) claims the session it was
issued for: the id is single-use and bound to the identity that got it
(see :meth:`session_store.SessionStore.claim_resume`); a session still held
by a live connection, on this node or any other (asked over the bus with
:data:`HOLDER_QUERY`), is refused to the claimant. Anything else gets a
fresh fork of the HTTP session, kept in the process until the connection
is accepted (see :meth:`.connection_sessions.ConnectionSessions.accept`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cluster.flask_integration.bound_session import BoundSession
from cluster.flask_integration.event_context import EventRequestContext
from cluster.recovery import history
from cluster.sessions.connection_state import empty_record
from session_store import (
    ForkedSession,
    SessionNotFound,
    SessionStoreAccessDenied,
    SessionStoreError,
    SessionStoreUnavailable,
    redact,
)
from session_store.resume import new_claim_token

if TYPE_CHECKING:
    from cluster.sessions.connection_sessions import ConnectionSessions

logger = logging.getLogger("cluster.sessions")

#: asked of every node before a resume takes over a session: does a live
#: connection of yours hold it? A silent node is taken as holding nothing.
HOLDER_QUERY = "cluster:holds-session"
#: a live node answers within one bus round trip (milliseconds); the whole
#: wait is paid only when the holder died (SIGKILL), by every resume from it
HOLDER_TIMEOUT = 0.25
#: seconds a CONNECT keeps trying to claim its session while the session
#: store is unavailable, before it gets a new session (see claim_retrying)
CLAIM_RETRY_SECONDS = 5.0
#: the first pause between two tries, doubled each time up to the cap
CLAIM_RETRY_PAUSE = 0.25
CLAIM_RETRY_PAUSE_MAX = 1.0


def bind(sessions: ConnectionSessions, environ: dict[str, Any], auth: Any
         ) -> BoundSession | None:
    """The binding of a connecting client: its resumed session, or a new
    fork of its HTTP session (``None`` without an application or a store)."""
    app = sessions.socketio.app
    if app is None or sessions.store is None:
        return None
    with EventRequestContext(app, environ) as context:
        http_session = dict(context.session)
        identity = identity_of(sessions, auth, http_session)
    pid = auth.get("pid") if isinstance(auth, dict) else None
    bound: BoundSession | None = None
    if pid is not None:
        try:
            bound = claim_retrying(sessions, pid, identity)
        except SessionStoreError as exc:
            sessions.counters["store_errors"] += 1
            logger.error("session store unavailable at connect (%s); the resume id is "
                         "not checked and this connection gets a new session", exc)
    if bound is None:
        # in the process only until the connection is accepted
        bound = BoundSession(session=ForkedSession(http_session, new=True), identity=identity)
    offset = history.client_offset(auth)
    if offset is not None:
        bound.offset = offset
    return bound


def claim_retrying(sessions: ConnectionSessions, pid: Any, identity: str | None
                   ) -> BoundSession | None:
    """:func:`claim`, tried again while the store is unavailable, for up to
    :data:`CLAIM_RETRY_SECONDS`: a Redis failover or restart lasts seconds,
    and a client given a new session meanwhile loses its session and rooms
    for good. Every try is the same claim (one claim token), so one that ran
    but whose answer was lost is granted to the next try, not refused as a
    replay.

    :raises SessionStoreError: the store still failed at the deadline, or
        refused our credentials (no use trying again).
    """
    token = new_claim_token()
    deadline = time.monotonic() + CLAIM_RETRY_SECONDS
    pause = CLAIM_RETRY_PAUSE
    while True:
        try:
            return claim(sessions, pid, identity, token)
        except SessionStoreAccessDenied:
            raise
        except SessionStoreUnavailable as exc:
            if time.monotonic() + pause > deadline:
                raise
            sessions.counters["resume_claim_retries"] += 1
            logger.warning("session store unavailable while a resume was claimed (%s); "
                           "trying again in %g s", exc, pause)
            sessions.socketio.sleep(pause)
            pause = min(pause * 2, CLAIM_RETRY_PAUSE_MAX)


def claim(sessions: ConnectionSessions, pid: Any, identity: str | None,
          claim_token: str | None = None) -> BoundSession | None:
    """The session resume id ``pid`` was issued for, claimed by ``identity``
    (``None``: refused, counted); ``claim_token``: see
    :meth:`session_store.SessionStore.claim_resume`."""
    store = sessions.store
    if store is None:
        return None
    result = store.claim_resume(pid, identity, claim_token)
    if not result.granted or result.session_id is None:
        sessions.counters["resume_refused"] += 1
        return None
    if held_by_a_live_connection(sessions, result.session_id):
        # the id stays the holder's: put it back and refuse this claimant
        store.issue_resume(result.session_id, identity, reuse=pid)
        sessions.counters["resume_in_use"] += 1
        logger.warning("resume %s refused: its session is held by a live connection",
                       redact(pid))
        return None
    session = store.load(result.session_id)
    if session is None:
        sessions.counters["resume_refused"] += 1
        return None
    try:
        record = sessions.state.load(result.session_id)
    except Exception as exc:  # a missing record only loses the rooms
        logger.warning("connection record of %s unavailable: %s",
                       redact(result.session_id), exc)
        record = empty_record()
    sessions.counters["resumed"] += 1
    return BoundSession(session=session, session_id=result.session_id, identity=identity,
                        resumed=True, claimed_pid=pid,
                        rooms={ns: set(rooms) for ns, rooms in record["rooms"].items()},
                        previous_sids=record["sids"], base_offsets=record["base"],
                        rebased=record["rebased"])


def unclaim(sessions: ConnectionSessions, bound: BoundSession) -> None:
    """A refused CONNECT gives back the session it claimed."""
    store, session_id = sessions.store, bound.session_id
    if store is None or session_id is None:
        return
    sessions.local.pop(session_id, None)
    pid = bound.claimed_pid
    if sessions.stable_resume_ids and pid is not None:
        # the client keeps its pid and may come back with it: re-arm it
        # (with the TTL the session still has) instead of spending it
        try:
            store.issue_resume(session_id, bound.identity, reuse=pid)
        except SessionNotFound:
            pass  # expired meanwhile: nothing to give back
    else:
        # its resume id is spent: nothing could resume the session again
        store.delete(session_id)
        sessions.state.delete(session_id)


def held_by_a_live_connection(sessions: ConnectionSessions, session_id: str) -> bool:
    """Whether a live connection of any node holds ``session_id``."""
    if sessions.holds(session_id):
        return True
    cluster = sessions.features().cluster
    if cluster is None:
        return False
    from cluster.bus import ClusterRequestError, ClusterRequestTimeout

    try:
        answers = cluster.server_side_call(HOLDER_QUERY, session_id, timeout=HOLDER_TIMEOUT)
    except ClusterRequestTimeout as exc:
        # a node that does not answer (killed, say) holds nothing any more
        answers = [a.get("result") for a in exc.partial.values() if isinstance(a, dict)]
    except ClusterRequestError:
        return False
    return any(answer is True for answer in answers)


def identity_of(sessions: ConnectionSessions, auth: Any,
                http_session: Mapping[str, Any]) -> str | None:
    """Who connects: ``resume_identity(auth)``, else Flask-Login's user id."""
    if sessions.identity_loader is not None:
        identity = sessions.identity_loader(auth)
        return None if identity is None else str(identity)
    user_id = http_session.get("_user_id")  # Flask-Login's key
    return None if user_id is None else str(user_id)
