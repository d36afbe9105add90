"""Writing a connection's record and rooms to the state store
(:mod:`cluster.sessions.connection_state`), for
:class:`~cluster.sessions.connection_sessions.ConnectionSessions`.

Every function raises :class:`session_store.SessionStoreError` when Redis
refuses (:class:`~cluster.sessions.connection_state.KeyTypeCleared` when a
key had the wrong type and was cleared: the caller then writes everything
back, :func:`cluster.sessions.repair.write_back`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from session_store import SessionStoreError

if TYPE_CHECKING:
    from cluster.flask_integration.bound_session import BoundSession
    from cluster.sessions.connection_sessions import ConnectionSessions


def flush_rooms(sessions: ConnectionSessions, bound: BoundSession) -> None:
    """Write the pending joins and leaves: one set operation each."""
    if not bound.room_changes or bound.session_id is None or sessions.store is None:
        return
    changes = bound.take_room_changes()
    added = [key for key, joined in changes.items() if joined]
    removed = [key for key, joined in changes.items() if not joined]
    try:
        sessions.state.change_rooms(bound.session_id, added, removed,
                                    sessions.store.lease_ttl)
    except SessionStoreError:  # KeyTypeCleared: the caller writes everything back
        bound.put_back_room_changes(changes)
        raise
    except Exception as exc:  # redis errors of the rooms set
        bound.put_back_room_changes(changes)
        raise SessionStoreError(f"rooms of the connection: {exc}") from exc


@contextlib.contextmanager
def _record_errors() -> Iterator[None]:
    """Redis errors of the connection record as the store's own error."""
    try:
        yield
    except SessionStoreError:
        raise
    except Exception as exc:  # redis errors of the connection record
        raise SessionStoreError(f"connection record: {exc}") from exc


def write_record(sessions: ConnectionSessions, bound: BoundSession) -> None:
    """The whole record (when the connection is accepted), then the rooms."""
    if bound.session_id is None or sessions.store is None:
        return
    with _record_errors():
        sessions.state.save(bound.session_id, bound.record(), sessions.store.lease_ttl)
        bound.left.clear()
    flush_rooms(sessions, bound)


def write_namespace(sessions: ConnectionSessions, bound: BoundSession, namespace: str) -> None:
    """A later namespace of an accepted connection: its own field only (and
    the fields of namespaces it left meanwhile go)."""
    if bound.session_id is None or sessions.store is None:
        return
    with _record_errors():
        sessions.state.save_namespace(bound.session_id, bound.record(), namespace,
                                      sessions.store.lease_ttl, forget=bound.left)
        bound.left.clear()
    flush_rooms(sessions, bound)
