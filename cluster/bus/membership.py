"""Room membership changes, announced to one listener.

Every way a sid enters or leaves a room on this node (a handler's
``join_room``, a cross-node ``join_room(sid=...)`` arriving over the bus,
``sockets_join``, ``close_room``, a disconnect) ends in python-socketio's
``basic_enter_room``/``basic_leave_room``. Announcing changes there lets the
node keep each resumable connection's rooms up to date whatever caused them.
"""
from __future__ import annotations

from typing import Any, Callable

import socketio

MembershipListener = Callable[[Any, str, Any, bool], None]


class MembershipEvents:
    """Mixin for client managers: calls ``membership_listener(sid, namespace,
    room, joined)`` after a sid joins or leaves a named room (never for the
    ``None`` room or the sid's own room)."""

    membership_listener: MembershipListener | None = None

    def basic_enter_room(self, sid: Any, namespace: str, room: Any,
                         eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room,  # type: ignore[misc]
                                 eio_sid=eio_sid)
        self._announce(sid, namespace, room, True)

    def basic_leave_room(self, sid: Any, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        self._announce(sid, namespace, room, False)

    def _announce(self, sid: Any, namespace: str, room: Any, joined: bool) -> None:
        listener = self.membership_listener
        if listener is not None and room is not None and room != sid:
            listener(sid, namespace, room, joined)


class LocalManager(MembershipEvents, socketio.Manager):
    """python-socketio's single-node manager with membership events."""
