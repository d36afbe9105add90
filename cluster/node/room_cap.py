"""``max_rooms_per_connection``, and resumable rooms kept current.

A connection of this node may be in at most ``max_rooms_per_connection``
rooms per namespace (its own sid room aside). :meth:`RoomCap.check_join`
refuses a join past it where the join is asked (``join_room``, which then
raises :class:`cluster.exceptions.RoomLimitExceeded`); a join that bypassed
it (another node's ``join_room(sid=...)``, ``sockets_join``) cannot raise to
whoever asked, so the manager's membership listener,
:meth:`RoomCap.room_changed`, undoes it. Every other change of a local
connection's rooms is handed to the connection sessions, which persist the
rooms a resume restores.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import flask

from cluster import compat
from cluster.exceptions import RoomLimitExceeded

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer

logger = logging.getLogger("cluster.node.server")


class RoomCap:
    """The room cap of one server (see the module doc)."""

    def __init__(self, server: ClusterServer) -> None:
        self.server = server

    def check_join(self, sid: str, namespace: str, room: Any) -> None:
        """:raises RoomLimitExceeded: local ``sid`` is in as many rooms as
        allowed already (a sid on another node is checked there)."""
        if room != sid and self.beyond_cap(sid, namespace, room, joining=True):
            server = self.server
            server.counters["room_limit_refusals"] += 1
            raise RoomLimitExceeded(sid, namespace, server.limits.max_rooms_per_connection)

    def beyond_cap(self, sid: str, namespace: str, room: Any, joining: bool) -> bool:
        """Whether local ``sid`` is (``joining``: would be) past the room cap."""
        server = self.server
        manager = server.manager
        if joining:
            if compat.room_has_member(manager, namespace, room, sid):
                return False  # already in: nothing grows
            if not compat.is_local_connection(manager, sid, namespace):
                return False  # not on this node: its own node decides
        # the index counts the sid's own room too
        count = len(manager.get_rooms(sid, namespace)) - 1
        cap = server.limits.max_rooms_per_connection
        return count >= cap if joining else count > cap

    def room_changed(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        """Membership listener of the manager: keeps resumable rooms current."""
        server = self.server
        if joined and self.beyond_cap(sid, namespace, room, joining=False):
            server.counters["room_limit_refusals"] += 1
            logger.warning("connection %s is in more than max_rooms_per_connection=%d rooms "
                           "of %s; the join of %r is undone", sid[:8],
                           server.limits.max_rooms_per_connection, namespace, room)
            server.start_background_task(server.manager.leave_room, sid, namespace, room)
            return
        sessions = server.sessions
        if sessions is None:
            return
        try:
            environ = server.get_environ(sid, namespace)
        except KeyError:  # the namespace's bookkeeping is being torn down
            return
        if environ is None:  # the client lives on another node
            return
        # inside the client's own handler the runner saves after the handler
        # (before its ack); anywhere else the change is saved now
        in_handler = flask.has_request_context() and getattr(flask.request, "sid", None) == sid
        sessions.on_rooms_changed(sid, namespace, environ, room, joined, in_handler)
