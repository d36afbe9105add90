"""Room membership: a per-sid index, and changes announced to one listener.

Every way a sid enters or leaves a room on this node (a handler's
``join_room``, a cross-node ``join_room(sid=...)`` arriving over the bus,
``sockets_join``, ``close_room``, a disconnect) ends in python-socketio's
``basic_enter_room``/``basic_leave_room``. Hooking there:

- keeps an index of each sid's rooms, so ``get_rooms`` (``rooms()`` in a
  handler, ``rooms_of``, recovery) and ``basic_disconnect`` cost the sid's
  own rooms instead of a scan of every room of the namespace; with one room
  per client the scan made opening N connections O(N^2) (measured: 10,000
  connections opened at ~100/s near the end instead of ~500/s);
- lets the node keep each resumable connection's rooms current, whatever
  caused the change.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import socketio

from cluster import compat

MembershipListener = Callable[[Any, str, Any, bool], None]


class MembershipEvents:
    """Mixin for client managers: indexes rooms by sid and calls
    ``membership_listener(sid, namespace, room, joined)`` after a sid joins
    or leaves a named room (never for the ``None`` room or the sid's own)."""

    membership_listener: MembershipListener | None = None
    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[Any, Any]

    @property
    def _sid_rooms(self) -> dict[tuple[str, Any], set[Any]]:
        index: dict[tuple[str, Any], set[Any]] | None = self.__dict__.get("_sid_rooms_index")
        if index is None:
            index = self.__dict__["_sid_rooms_index"] = {}
        return index

    def basic_enter_room(self, sid: Any, namespace: str, room: Any,
                         eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room,  # type: ignore[misc]
                                 eio_sid=eio_sid)
        self._sid_rooms.setdefault((namespace, sid), set()).add(room)
        self._announce(sid, namespace, room, True)

    def basic_leave_room(self, sid: Any, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        key = (namespace, sid)
        members = self._sid_rooms.get(key)
        if members is not None:
            members.discard(room)
            if not members:
                del self._sid_rooms[key]
        self._announce(sid, namespace, room, False)

    def get_rooms(self, sid: Any, namespace: str) -> list[Any]:
        """The rooms ``sid`` is in (its own room included), from the index."""
        return [room for room in self._sid_rooms.get((namespace, sid), ()) if room is not None]

    def basic_disconnect(self, sid: Any, namespace: str, **kwargs: Any) -> None:
        # python-socketio's version finds the sid's rooms by scanning them all
        if namespace not in self.rooms:
            return
        for room in list(self._sid_rooms.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        compat.forget_pending_connections(self, sid, namespace)

    def _announce(self, sid: Any, namespace: str, room: Any, joined: bool) -> None:
        listener = self.membership_listener
        if listener is not None and room is not None and room != sid:
            listener(sid, namespace, room, joined)


class LocalManager(MembershipEvents, socketio.Manager):  # type: ignore[misc]  # untyped base
    """python-socketio's single-node manager with the room index and events."""


def named_rooms(rooms: dict[str, dict[Any, Any]]) -> list[tuple[str, Any]]:
    """``(namespace, room)`` of every room with members in a manager's
    ``rooms`` table, without the ``None`` room and the sids' own rooms."""
    for _ in range(10):
        try:
            return [(ns, room) for ns, table in list(rooms.items())
                    for room, members in list(table.items())
                    if room is not None and members
                    and not (len(members) == 1 and room in members)]
        except RuntimeError:  # resized by another thread: copy again
            continue
    return []
