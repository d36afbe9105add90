"""The forked session of each connection: bound, saved, resumed, released.

A connection's forked session is a :class:`session_store.ForkedSession`
held in the connection's WSGI environ, so every namespace of one Engine.IO
connection shares it, as in Flask-SocketIO. All handlers of a connection run
on the node holding it and share that one object.

With a store (Redis in a cluster) the fork is also persisted:

- at connect it is forked from the HTTP session, or, when the CONNECT
  payload carries a valid resume id (``pid``), loaded from the store, the
  rooms of the old connection re-joined, and ``request.resumed`` set;
- it is written to the store only once the connection exists, when the
  CONNECT reply goes out: a CONNECT that is refused, or aimed at a
  namespace that does not exist, leaves nothing in Redis nor in the node
  (a resumed session it claimed goes back to how it was);
- every change is written through before the ack or the next event; a room
  join or leave is one set operation in Redis, a later namespace one hash
  field; when the store refuses the write the handler path gets
  :class:`session_store.SessionNotSaved` (:mod:`.repair`), so the ack never
  claims it; a session the store lost under a live connection is written
  back from it;
- each connection gets a fresh single-use resume id, bound to the identity
  (Flask-Login's user id, or what ``resume_identity`` returns), sent to the
  client as ``pid`` in the CONNECT reply;
- when the connection ends the session's TTL starts.

If the store is unreachable at connect the connection still works with an
in-process fork (counted and logged); it just cannot be resumed later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cluster.bus import bus_features
from cluster.bus.features import BusFeatures
from cluster.flask_integration.bound_session import BoundSession
from cluster.recovery import history
from cluster.sessions import record_writes, repair, resume
from cluster.sessions.connection_state import KeyTypeCleared
from cluster.sessions.resume import HOLDER_QUERY, HOLDER_TIMEOUT
from session_store import ForkedSession, SessionStore, SessionStoreError, redact

__all__ = ["ConnectionSessions", "ENVIRON_KEY", "HOLDER_QUERY", "HOLDER_TIMEOUT"]

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

logger = logging.getLogger("cluster.sessions")

#: where a connection's binding lives in its WSGI environ
ENVIRON_KEY = "cluster.connection_session"


class ConnectionSessions:
    """Forked sessions of the connections on this node.

    :param store: where forks persist; ``None`` keeps them in the connection
        only (Flask-SocketIO's behaviour, nothing to resume).
    :param state: where the rooms of resumable connections persist.
    :param identity_loader: ``f(auth) -> str | None`` called inside the
        connect request context; default: Flask-Login's user id from the
        HTTP session, else ``None`` (anonymous).
    """

    def __init__(self, socketio: SocketIO, store: SessionStore | None = None,
                 state: Any = None,
                 identity_loader: Callable[[Any], str | None] | None = None,
                 stable_resume_ids: bool = False) -> None:
        self.socketio = socketio
        self.store = store
        self.state = state
        self.identity_loader = identity_loader
        # connection state recovery: a resumed connection keeps its pid
        self.stable_resume_ids = stable_resume_ids
        self.counters: dict[str, int] = {
            "forked": 0, "persisted": 0, "resumed": 0, "resume_refused": 0,
            "resume_in_use": 0, "store_errors": 0, "session_not_saved": 0,
            "sessions_rewritten": 0, "resume_claim_retries": 0,
        }
        # session id -> environ of the connections bound on this node
        self.local: dict[str, dict[str, Any]] = {}
        #: renews the live sessions' leases (:mod:`.session_leases`); started
        #: by the first accepted connection
        self.leases: Any = None

    def live_bindings(self) -> list[tuple[str, BoundSession]]:
        """``(session id, binding)`` of each live, stored connection here."""
        live = []
        for session_id, environ in list(self.local.items()):
            bound = environ.get(ENVIRON_KEY)
            if bound is not None and bound.accepted and bound.sids:
                live.append((session_id, bound))
        return live

    def holds(self, session_id: str) -> bool:
        """Whether a live connection on this node holds ``session_id``."""
        environ = self.local.get(session_id)
        bound = environ.get(ENVIRON_KEY) if environ is not None else None
        return bool(bound is not None and bound.sids)

    def release(self, environ: Mapping[str, Any]) -> None:
        """The connection of ``environ`` no longer holds its session (a pause
        fenced it; it is being closed): the holder query says so at once."""
        bound = environ.get(ENVIRON_KEY)
        if bound is not None and bound.session_id is not None \
                and self.local.get(bound.session_id) is environ:
            del self.local[bound.session_id]

    # -- used by the handler runner and the server ----------------------------

    def session_for(self, environ: Mapping[str, Any]) -> ForkedSession | None:
        bound = environ.get(ENVIRON_KEY)
        return bound.session if bound is not None else None

    def recovery_offset(self, environ: Mapping[str, Any], namespace: str) -> str | None:
        """Where the replay of a recovering connection starts."""
        return history.replay_offset(environ.get(ENVIRON_KEY), namespace)

    def recovery_start(self, environ: Mapping[str, Any], namespace: str) -> str | None:
        """The session's recorded start in ``namespace``: no replay before it."""
        return history.session_start(environ.get(ENVIRON_KEY), namespace)

    def recovery_rebased(self, environ: Mapping[str, Any], namespace: str) -> str | None:
        """Where the recovery stream restarted while the session lived, if it did."""
        return history.restart_point(environ.get(ENVIRON_KEY), namespace)

    def saved_rooms(self, environ: Mapping[str, Any], namespace: str) -> list[str]:
        """The rooms a resumed connection gets back in ``namespace``."""
        bound = environ.get(ENVIRON_KEY)
        return sorted(bound.rooms.get(namespace, ())) if bound is not None else []

    def mark_recovered(self, environ: Mapping[str, Any]) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is not None:
            bound.recovered = True

    def is_recovered(self, environ: Mapping[str, Any]) -> bool:
        bound = environ.get(ENVIRON_KEY)
        return bool(bound is not None and bound.recovered)

    def is_resumed(self, environ: Mapping[str, Any]) -> bool:
        bound = environ.get(ENVIRON_KEY)
        return bool(bound is not None and bound.resumed)

    def resume_id(self, environ: Mapping[str, Any]) -> str | None:
        bound = environ.get(ENVIRON_KEY)
        return bound.resume_id if bound is not None else None

    def fork(self, environ: dict[str, Any], http_session: Mapping[str, Any]) -> ForkedSession:
        """Bind an in-process copy of ``http_session``, once (no store, or store down)."""
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            bound = BoundSession(session=ForkedSession(dict(http_session)))
            environ[ENVIRON_KEY] = bound
            self.counters["forked"] += 1
        return bound.session

    def save(self, environ: Mapping[str, Any], session: Any) -> None:
        """Write the handler's changes (session and rooms) through to the store.

        :raises SessionNotSaved: the store refused them (counted, logged once
            per window); they stay pending and go with the next save.
        """
        bound = environ.get(ENVIRON_KEY)
        if bound is None or not bound.accepted or bound.session_id is None \
                or self.store is None:
            return  # not accepted yet: accept() writes everything at once
        repair.write_through(self, bound, session)

    # -- rooms ---------------------------------------------------------------

    def on_rooms_changed(self, sid: str, namespace: str, environ: Mapping[str, Any] | None,
                         room: Any, joined: bool, in_handler: bool) -> None:
        """Track a local membership change; persisted now or after the handler."""
        bound = environ.get(ENVIRON_KEY) if environ is not None else None
        if bound is None or self.store is None or room == sid or not isinstance(room, str):
            return
        if namespace not in bound.sids:
            # leaving the namespace: these are the disconnect's own room exits,
            # and the rooms are exactly what a resume must restore
            return
        if not bound.note_room(namespace, room, joined):
            return  # e.g. a resumed connection re-entering its saved rooms
        if not in_handler and bound.accepted:
            try:
                record_writes.flush_rooms(self, bound)
            except KeyTypeCleared:
                repair.write_back_logged(self, bound)
            except SessionStoreError as exc:
                self.counters["store_errors"] += 1
                logger.error("could not persist rooms of %s: %s", redact(bound.session_id), exc)

    def server(self) -> Any:
        """The node's Socket.IO server (its manager and limits)."""
        return self.socketio.server

    def features(self) -> BusFeatures:
        """What the node's client manager can answer (asked at each use: the
        manager may be replaced before the first connection)."""
        return bus_features(self.server().manager)

    def _restore_rooms(self, bound: BoundSession, sid: str, namespace: str) -> None:
        server = self.server()
        cap = server.limits.max_rooms_per_connection
        rooms, dropped = bound.rooms_to_restore(namespace, cap)
        if dropped:
            # saved under a higher max_rooms_per_connection: keep what fits
            logger.warning("connection %s had %d rooms in %s; max_rooms_per_connection=%d "
                           "restores the first %d", sid[:8], len(rooms) + dropped, namespace,
                           cap, cap)
        for room in rooms:
            server.manager.enter_room(sid, namespace, room)

    # -- lifecycle hooks of the server ---------------------------------------

    def prepare(self, namespace: str, environ: dict[str, Any], auth: Any) -> str | None:
        """Bind the connection's session before its sid exists.

        Nothing is written yet (see :meth:`accept`). Returns the sid to
        restore when the connection resumes one that had a sid in
        ``namespace`` (used with connection state recovery).
        """
        bound: BoundSession | None = environ.get(ENVIRON_KEY)
        if bound is None and self.store is not None:
            bound = resume.bind(self, environ, auth)
            if bound is not None:
                environ[ENVIRON_KEY] = bound
        if bound is None or not bound.resumed or not self.stable_resume_ids:
            return None
        return bound.previous_sids.get(namespace)

    def on_connect(self, sid: str, namespace: str, environ: dict[str, Any], auth: Any) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            return
        bound.sids[namespace] = sid
        bound.left.discard(namespace)
        if bound.resumed:
            self._restore_rooms(bound, sid, namespace)
        if self.stable_resume_ids and not bound.recovered:
            # a fresh start in this namespace: the client has received nothing
            # before this offset, so no replay may start earlier
            reader = self.features().recovery
            history.start_fresh(bound, namespace,
                                reader.last_offset() if reader is not None else None)
        if bound.accepted and bound.session_id is not None and self.store is not None:
            # a later namespace of an accepted connection
            try:
                if bound.expiring:
                    self.store.persist(bound.session_id)
                    bound.expiring = False
                    self.local[bound.session_id] = environ
                record_writes.write_namespace(self, bound, namespace)
            except KeyTypeCleared:
                repair.write_back_logged(self, bound)
            except SessionStoreError as exc:
                self.counters["store_errors"] += 1
                logger.error("could not record connection %s: %s", redact(bound.session_id), exc)

    def accept(self, environ: dict[str, Any]) -> str | None:
        """The connection exists (its CONNECT reply goes out now): persist it.

        Writes the new session (with what the connect handler put in it), or
        renews the resumed one, issues the resume id and records the sids
        and rooms. Returns the resume id for the reply's ``pid``; ``None``
        without a store, or when the store is down (the connection then has
        an in-process session that cannot be resumed).
        """
        bound: BoundSession | None = environ.get(ENVIRON_KEY)
        if bound is None:
            return None
        if bound.accepted or self.store is None:
            return bound.resume_id
        bound.accepted = True
        store = self.store
        issued: str | None = None
        if bound.session_id is None:
            try:
                mark = bound.session.change_mark
                # the session and its first resume id in one round trip
                handle, issued = store.create_resumable(dict(bound.session), bound.identity)
            except SessionStoreError as exc:
                self.counters["store_errors"] += 1
                self.counters["forked"] += 1
                logger.error("session store unavailable at connect (%s); this connection gets "
                             "an in-process session that cannot be resumed", exc)
                return None
            bound.session.mark_saved(through=mark)
            bound.session_id = handle.session_id
            self.counters["persisted"] += 1
        self.local[bound.session_id] = environ
        if self.leases is not None:
            self.leases.start()
        try:
            reuse = bound.claimed_pid if self.stable_resume_ids else None
            if issued is not None:
                bound.resume_id = issued
            elif bound.resumed:
                # the connected lease and the resume id in one round trip
                bound.resume_id = store.reconnected(bound.session_id, bound.identity, reuse=reuse)
                if bound.session.modified:
                    store.save(bound.session_id, bound.session)
            else:
                bound.resume_id = store.issue_resume(bound.session_id, bound.identity,
                                                     reuse=reuse)
            bound.claimed_pid = None
            record_writes.write_record(self, bound)
        except SessionStoreError as exc:
            self.counters["store_errors"] += 1
            logger.error("could not record connection %s (%s); it may not be resumable",
                         redact(bound.session_id), exc)
        return bound.resume_id

    def settle(self, namespace: str, environ: dict[str, Any], connected: bool) -> None:
        """After a CONNECT to ``namespace``: a failed one leaves nothing behind.

        A CONNECT that was refused, aimed at an unknown namespace, or that
        failed otherwise, on a connection in no other namespace, drops the
        binding; a session it claimed to resume goes back to how it was.
        """
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            return
        if connected:
            bound.connected_once = True
            return
        if bound.sids or bound.connected_once:
            return  # the binding belongs to a connection that exists
        environ.pop(ENVIRON_KEY, None)
        if bound.session_id is None or self.store is None:
            return
        try:
            if bound.accepted and not bound.resumed:
                # always_connect: the CONNECT reply went out before the refusal
                self.local.pop(bound.session_id, None)
                self.store.delete(bound.session_id)
                self.state.delete(bound.session_id)
            elif bound.resumed:
                resume.unclaim(self, bound)
        except SessionStoreError as exc:
            self.counters["store_errors"] += 1
            logger.error("could not release refused session %s: %s",
                         redact(bound.session_id), exc)
        except Exception as exc:  # the connection record's own redis errors
            self.counters["store_errors"] += 1
            logger.error("could not release refused connection %s: %s",
                         redact(bound.session_id), exc)

    def on_refused(self, sid: str, namespace: str, environ: dict[str, Any]) -> None:
        self._leave(namespace, environ)

    def on_disconnect(self, sid: str, namespace: str, environ: dict[str, Any]) -> None:
        self._leave(namespace, environ)

    def flush(self, timeout: float) -> None:
        """Nothing is pending: every save is write-through."""

    def _leave(self, namespace: str, environ: dict[str, Any]) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            return
        bound.sids.pop(namespace, None)
        if not bound.accepted or bound.session_id is None or self.store is None:
            return
        if bound.sids:
            # dropped from the stored record with the next namespace written
            # (not now: a transport close leaves every namespace in turn)
            bound.left.add(namespace)
            return
        if self.local.get(bound.session_id) is not environ:
            # released when a pause fenced it, or held by a newer connection
            # of this node: not this connection's session to count down
            bound.expiring = True
            return
        self.local.pop(bound.session_id, None)
        bound.expiring = True
        # the last namespace of the connection is gone: the resume window opens
        try:
            record_writes.flush_rooms(self, bound)
            # the resume id this node issued moves along in the same round trip
            self.store.expire(bound.session_id, resume_id=bound.resume_id)
            self.state.expire(bound.session_id, self.store.ttl)
        except SessionStoreError as exc:
            self.counters["store_errors"] += 1
            logger.error("could not start the TTL of session %s: %s",
                         redact(bound.session_id), exc)
        except Exception as exc:  # the rooms record's own redis errors
            self.counters["store_errors"] += 1
            logger.error("could not expire rooms of %s: %s", redact(bound.session_id), exc)
