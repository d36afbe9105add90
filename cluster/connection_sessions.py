"""The forked session of each connection: bound, saved, resumed, released.

A connection's forked session is a :class:`session_store.ForkedSession`
held in the connection's WSGI environ, so every namespace of one Engine.IO
connection shares it, as in Flask-SocketIO. All handlers of a connection run
on the node holding it and share that one object.

With a store (Redis in a cluster) the fork is also persisted:

- at connect it is created from the HTTP session, or, when the CONNECT
  payload carries a valid resume id (``pid``), loaded from the store, the
  rooms of the old connection re-joined, and ``request.resumed`` set;
- every change is written through before the ack or the next event;
- each connection gets a fresh single-use resume id, bound to the identity
  (Flask-Login's user id, or what ``resume_identity`` returns), sent to the
  client as ``pid`` in the CONNECT reply;
- when the connection ends the session's TTL starts.

If the store is unreachable at connect the connection still works with an
in-process fork (counted and logged); it just cannot be resumed later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from session_store import (
    ForkedSession,
    MemorySessionStore,
    RedisSessionStore,
    SessionNotFound,
    SessionStore,
    SessionStoreError,
    redact,
)

from .connection_state import MemoryConnectionState, RedisConnectionState, empty_record

if TYPE_CHECKING:
    from .extension import SocketIO

logger = logging.getLogger("cluster.sessions")

ENVIRON_KEY = "cluster.connection_session"
# asked of every node before a recovery takes over a session: does a live
# connection of yours hold it? A silent node is taken as holding nothing.
HOLDER_QUERY = "cluster:holds-session"
HOLDER_TIMEOUT = 0.5
DEFAULT_SESSION_TTL = 120.0
DEFAULT_KEY_PREFIX = "sio:sess:"


@dataclass
class BoundSession:
    """What a connection holds: its fork, where it is stored, its rooms."""

    session: ForkedSession
    session_id: str | None = None
    resume_id: str | None = None
    identity: str | None = None
    resumed: bool = False
    sids: dict[str, str] = field(default_factory=dict)
    rooms: dict[str, list[str]] = field(default_factory=dict)
    rooms_dirty: bool = False
    # sids of the connection that was resumed, by namespace: with connection
    # state recovery the new connection takes them over
    previous_sids: dict[str, str] = field(default_factory=dict)
    # offsets: the client's last one (CONNECT payload), and the stream's
    # newest at connect per namespace, the start of a client that got nothing
    offset: str | None = None
    base_offsets: dict[str, str] = field(default_factory=dict)
    recovered: bool = False


class ConnectionSessions:
    """Forked sessions of the connections on this node.

    :param store: where forks persist; ``None`` keeps them in the connection
        only (Flask-SocketIO's behaviour, nothing to resume).
    :param state: where the rooms of resumable connections persist.
    :param identity_loader: ``f(auth) -> str | None`` called inside the
        connect request context; default: Flask-Login's user id from the
        HTTP session, else ``None`` (anonymous).
    """

    def __init__(self, socketio: "SocketIO", store: SessionStore | None = None,
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
            "resume_in_use": 0, "store_errors": 0,
        }
        # session id -> environ of the connections bound on this node
        self.local: dict[str, dict[str, Any]] = {}

    def holds(self, session_id: str) -> bool:
        """Whether a live connection on this node holds ``session_id``."""
        environ = self.local.get(session_id)
        bound = environ.get(ENVIRON_KEY) if environ is not None else None
        return bool(bound is not None and bound.sids)

    # -- used by the handler runner ------------------------------------------

    def session_for(self, environ: Mapping[str, Any]) -> ForkedSession | None:
        bound = environ.get(ENVIRON_KEY)
        return bound.session if bound is not None else None

    def recovery_offset(self, environ: Mapping[str, Any], namespace: str) -> str | None:
        """Where the replay of a recovering connection starts."""
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            return None
        return bound.offset or bound.base_offsets.get(namespace)

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
        """Write the handler's changes (session and rooms) through to the store."""
        bound = environ.get(ENVIRON_KEY)
        if bound is None or bound.session_id is None or self.store is None:
            return
        try:
            if isinstance(session, ForkedSession) and session.modified:
                self.store.save(bound.session_id, session)
            if bound.rooms_dirty:
                self._save_rooms(bound)
        except SessionNotFound:
            logger.warning("session %s expired in the store while connected; changes stay "
                           "in this connection only", redact(bound.session_id))
            self.counters["store_errors"] += 1
        except SessionStoreError as exc:
            # the changes stay pending in the ForkedSession and go with the next save
            self.counters["store_errors"] += 1
            logger.error("could not persist session %s: %s", redact(bound.session_id), exc)

    # -- rooms ---------------------------------------------------------------

    def on_rooms_changed(self, sid: str, namespace: str, environ: Mapping[str, Any] | None,
                         room: str, joined: bool, in_handler: bool) -> None:
        """Track a local membership change; persisted now or after the handler."""
        bound = environ.get(ENVIRON_KEY) if environ is not None else None
        if bound is None or bound.session_id is None or room == sid:
            return
        if namespace not in bound.sids:
            # leaving the namespace: these are the disconnect's own room exits,
            # and the rooms are exactly what a resume must restore
            return
        rooms = bound.rooms.setdefault(namespace, [])
        if joined and room not in rooms:
            rooms.append(room)
        elif not joined and room in rooms:
            rooms.remove(room)
        else:
            return
        bound.rooms_dirty = True
        if not in_handler:
            try:
                self._save_rooms(bound)
            except SessionStoreError as exc:
                self.counters["store_errors"] += 1
                logger.error("could not persist rooms of %s: %s", redact(bound.session_id), exc)

    def _save_rooms(self, bound: BoundSession) -> None:
        if bound.session_id is None or self.store is None:
            return
        try:
            self.state.save(bound.session_id, {"sids": bound.sids, "rooms": bound.rooms,
                                               "base": bound.base_offsets},
                            self.store.lease_ttl)
        except Exception as exc:  # redis errors of the rooms record
            raise SessionStoreError(f"rooms record: {exc}") from exc
        bound.rooms_dirty = False

    # -- lifecycle hooks of the server ---------------------------------------

    def prepare(self, namespace: str, environ: dict[str, Any], auth: Any) -> str | None:
        """Bind the connection's session before its sid exists.

        Returns the sid to restore when the connection resumes one that had
        a sid in ``namespace`` (used with connection state recovery).
        """
        bound = environ.get(ENVIRON_KEY)
        if bound is None and self.store is not None:
            bound = self._bind(environ, auth)
        if bound is None or not bound.resumed or not self.stable_resume_ids:
            return None
        return bound.previous_sids.get(namespace)

    def on_connect(self, sid: str, namespace: str, environ: dict[str, Any], auth: Any) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            return
        bound.sids[namespace] = sid
        if bound.resumed:
            self._restore_rooms(bound, sid, namespace)
        if self.stable_resume_ids and not bound.recovered:
            # a fresh start in this namespace: replay for a client that has
            # received nothing yet starts from here
            last = getattr(self.socketio.server.manager, "recovery_last_offset", None)
            base = last() if callable(last) else None
            if base is not None:
                bound.base_offsets[namespace] = base
        if bound.session_id is not None:
            bound.rooms_dirty = True
            try:
                self._save_rooms(bound)
            except SessionStoreError as exc:
                self.counters["store_errors"] += 1
                logger.error("could not record connection %s: %s", redact(bound.session_id), exc)

    def _bind(self, environ: dict[str, Any], auth: Any) -> BoundSession | None:
        store = self.store
        app = self.socketio.app
        if app is None or store is None:
            return None
        with app.request_context(environ) as context:
            http_session = dict(context.session)
            identity = self._identity(auth, http_session)
        pid = auth.get("pid") if isinstance(auth, dict) else None
        bound: BoundSession | None = None
        try:
            if pid is not None:
                bound = self._resume(pid, identity)
            if bound is not None:
                reuse = pid if self.stable_resume_ids else None
            else:
                handle = store.create(http_session, identity)
                bound = BoundSession(session=handle.session, session_id=handle.session_id,
                                     identity=identity)
                self.counters["persisted"] += 1
                reuse = None
            session_id = bound.session_id or ""  # set on both paths above
            bound.resume_id = store.issue_resume(session_id, identity, reuse=reuse)
        except SessionStoreError as exc:
            self.counters["store_errors"] += 1
            logger.error("session store unavailable at connect (%s); this connection gets "
                         "an in-process session that cannot be resumed", exc)
            return None
        if isinstance(auth, dict) and isinstance(auth.get("offset"), str):
            bound.offset = auth["offset"]
        environ[ENVIRON_KEY] = bound
        self.local[session_id] = environ
        return bound

    def _resume(self, pid: Any, identity: str | None) -> BoundSession | None:
        store = self.store
        if store is None:
            return None
        result = store.claim_resume(pid, identity)
        if not result.granted or result.session_id is None:
            self.counters["resume_refused"] += 1
            return None
        if self.stable_resume_ids and self._held_by_a_live_connection(result.session_id):
            # the id stays the holder's: put it back and refuse this claimant
            store.issue_resume(result.session_id, identity, reuse=pid)
            self.counters["resume_in_use"] += 1
            logger.warning("resume %s refused: its session is held by a live connection",
                           redact(pid))
            return None
        session = store.load(result.session_id)
        if session is None:
            self.counters["resume_refused"] += 1
            return None
        store.persist(result.session_id)
        try:
            record = self.state.load(result.session_id)
        except Exception as exc:  # a missing record only loses the rooms
            logger.warning("connection record of %s unavailable: %s",
                           redact(result.session_id), exc)
            record = empty_record()
        self.counters["resumed"] += 1
        return BoundSession(session=session, session_id=result.session_id, identity=identity,
                            resumed=True, rooms=record["rooms"],
                            previous_sids=record["sids"], base_offsets=record["base"])

    def _held_by_a_live_connection(self, session_id: str) -> bool:
        if self.holds(session_id):
            return True
        cluster = getattr(self.socketio.server.manager, "cluster", None)
        if cluster is None:
            return False
        from .bus import ClusterRequestError, ClusterRequestTimeout

        try:
            answers = cluster.server_side_call(HOLDER_QUERY, session_id, timeout=HOLDER_TIMEOUT)
        except ClusterRequestTimeout as exc:
            # a node that does not answer (killed, say) holds nothing any more
            answers = [a.get("result") for a in exc.partial.values() if isinstance(a, dict)]
        except ClusterRequestError:
            return False
        return any(answer is True for answer in answers)

    def _restore_rooms(self, bound: BoundSession, sid: str, namespace: str) -> None:
        server = self.socketio.server
        for room in list(bound.rooms.get(namespace, [])):
            server.manager.enter_room(sid, namespace, room)

    def _identity(self, auth: Any, http_session: Mapping[str, Any]) -> str | None:
        if self.identity_loader is not None:
            identity = self.identity_loader(auth)
            return None if identity is None else str(identity)
        user_id = http_session.get("_user_id")  # Flask-Login's key
        return None if user_id is None else str(user_id)

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
        if bound.sids or bound.session_id is None or self.store is None:
            return
        self.local.pop(bound.session_id, None)
        # the last namespace of the connection is gone: the resume window opens
        try:
            self.store.expire(bound.session_id)
            self.state.expire(bound.session_id, self.store.ttl)
        except SessionStoreError as exc:
            self.counters["store_errors"] += 1
            logger.error("could not start the TTL of session %s: %s",
                         redact(bound.session_id), exc)
        except Exception as exc:  # the rooms record's own redis errors
            self.counters["store_errors"] += 1
            logger.error("could not expire rooms of %s: %s", redact(bound.session_id), exc)


def create_connection_sessions(socketio: "SocketIO", options: Mapping[str, Any]) -> ConnectionSessions:
    """The session binding for the extension's options.

    ``session_store``: a :class:`session_store.SessionStore`, ``"memory"``,
    or ``None`` (default: Redis when the bus URL is a Redis URL, else
    in-connection forks only). ``session_ttl`` (default 120 s) is how long a
    session may be resumed after its connection ends; ``session_key_prefix``
    (default ``"sio:sess:"``) namespaces the keys.
    """
    recovery = options.get("connection_state_recovery")
    default_ttl = DEFAULT_SESSION_TTL
    if isinstance(recovery, dict) and recovery.get("max_disconnection_duration"):
        # a session must outlive the window in which its client may recover
        default_ttl = float(recovery["max_disconnection_duration"])
    ttl = float(options.get("session_ttl") or default_ttl)
    prefix = options.get("session_key_prefix") or DEFAULT_KEY_PREFIX
    identity_loader = options.get("resume_identity")
    store = options.get("session_store")
    if store is None:
        url = options.get("redis_url") or options.get("message_queue")
        if isinstance(url, str) and url.split(":", 1)[0] in ("redis", "rediss", "unix"):
            store = RedisSessionStore(url, key_prefix=prefix, ttl=ttl,
                                      redis_options=options.get("message_queue_options"))
    elif store == "memory":
        store = MemorySessionStore(key_prefix=prefix, ttl=ttl)
    if store is None:
        return ConnectionSessions(socketio, identity_loader=identity_loader)
    if isinstance(store, RedisSessionStore):
        state: Any = RedisConnectionState(store.redis, store.key_prefix)
    else:
        state = MemoryConnectionState()
    sessions = ConnectionSessions(socketio, store=store, state=state,
                                  identity_loader=identity_loader,
                                  stable_resume_ids=bool(options.get("connection_state_recovery")))
    cluster = getattr(socketio.server.manager, "cluster", None) if socketio.server else None
    if cluster is not None:
        cluster.on(HOLDER_QUERY, sessions.holds)
    return sessions
