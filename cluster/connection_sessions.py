"""The forked session of each connection: bound, saved, released.

A connection's forked session is a :class:`session_store.ForkedSession`
held in the connection's WSGI environ (so every namespace of one Engine.IO
connection shares it, as in Flask-SocketIO). Handlers of that connection all
run on the node that holds the connection, so they share that one object;
with a store, each change is also written through to Redis before the ack
or the next event, which is what lets another node resume it later.

Without a store (single node, no Redis) this is Flask-SocketIO's behaviour
exactly: the fork lives as long as the connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from session_store import ForkedSession

if TYPE_CHECKING:
    from .extension import SocketIO

logger = logging.getLogger("cluster.sessions")

ENVIRON_KEY = "cluster.connection_session"


@dataclass
class BoundSession:
    """What a connection holds: its fork and where it is stored."""

    session: ForkedSession
    session_id: str | None = None
    namespaces: set[str] = field(default_factory=set)


class ConnectionSessions:
    """Forked sessions of the connections on this node (no persistence)."""

    def __init__(self, socketio: "SocketIO") -> None:
        self.socketio = socketio
        self.counters: dict[str, int] = {"forked": 0}

    # -- used by the handler runner ------------------------------------------

    def session_for(self, environ: Mapping[str, Any]) -> ForkedSession | None:
        bound = environ.get(ENVIRON_KEY)
        return bound.session if bound is not None else None

    def fork(self, environ: dict[str, Any], http_session: Mapping[str, Any]) -> ForkedSession:
        """Bind a copy of ``http_session`` to the connection, once."""
        bound = environ.get(ENVIRON_KEY)
        if bound is None:
            bound = BoundSession(session=self._new_fork(http_session))
            environ[ENVIRON_KEY] = bound
            self.counters["forked"] += 1
        return bound.session

    def save(self, environ: Mapping[str, Any], session: Any) -> None:
        """Nothing to persist without a store: the object is the fork."""

    # -- lifecycle hooks of the server ---------------------------------------

    def on_connect(self, sid: str, namespace: str, environ: dict[str, Any], auth: Any) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is not None:
            bound.namespaces.add(namespace)

    def on_refused(self, sid: str, namespace: str, environ: dict[str, Any]) -> None:
        self._leave(namespace, environ)

    def on_disconnect(self, sid: str, namespace: str, environ: dict[str, Any]) -> None:
        self._leave(namespace, environ)

    def flush(self, timeout: float) -> None:
        """Nothing is pending: saves are synchronous."""

    def _leave(self, namespace: str, environ: dict[str, Any]) -> None:
        bound = environ.get(ENVIRON_KEY)
        if bound is not None:
            bound.namespaces.discard(namespace)

    @staticmethod
    def _new_fork(http_session: Mapping[str, Any]) -> ForkedSession:
        return ForkedSession(dict(http_session))


def create_connection_sessions(socketio: "SocketIO", options: Mapping[str, Any]) -> ConnectionSessions:
    """The session binding for the extension's options."""
    return ConnectionSessions(socketio)
