"""What one connection holds on its node: its forked session and its rooms.

A :class:`BoundSession` lives in the connection's WSGI environ (so every
namespace of one Engine.IO connection shares it). Besides the fork it keeps
a mirror of the connection's named rooms and the joins and leaves not yet
written to the store, so a join costs one set operation in Redis, never a
rewrite of everything the connection is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.sessions.connection_state import RoomKey
from session_store import ForkedSession


@dataclass
class BoundSession:
    """A connection's fork, where it is stored, its rooms (see the module doc)."""

    session: ForkedSession
    session_id: str | None = None
    resume_id: str | None = None
    identity: str | None = None
    resumed: bool = False
    #: the resume id this connection claimed, until the connection is accepted
    claimed_pid: str | None = None
    #: written to the store: the CONNECT reply went out. Until then a refused
    #: connect leaves nothing behind
    accepted: bool = False
    connected_once: bool = False
    #: the last namespace was left: the session's resume window runs
    expiring: bool = False
    sids: dict[str, str] = field(default_factory=dict)
    rooms: dict[str, set[str]] = field(default_factory=dict)
    #: room joins (True) and leaves (False) not written to the store yet
    room_changes: dict[RoomKey, bool] = field(default_factory=dict)
    # sids of the connection that was resumed, by namespace: with connection
    # state recovery the new connection takes them over
    previous_sids: dict[str, str] = field(default_factory=dict)
    # offsets: the client's last one (CONNECT payload), and the stream's
    # newest when the session started in each namespace: its recorded start,
    # before which it cannot have received anything
    offset: str | None = None
    base_offsets: dict[str, str] = field(default_factory=dict)
    #: where the recovery stream restarted while the session lived (Redis
    #: came back empty): an older client offset replays from there
    rebased: dict[str, str] = field(default_factory=dict)
    recovered: bool = False
    #: namespaces left while the connection lives on, whose fields of the
    #: stored record go with the next namespace written (at a transport
    #: close every namespace is left, and the record must stay for a resume)
    left: set[str] = field(default_factory=set)

    def record(self) -> dict[str, dict[str, str]]:
        """The connection record to store (the rooms go separately)."""
        return {"sids": self.sids, "base": self.base_offsets, "rebased": self.rebased}

    def note_room(self, namespace: str, room: str, joined: bool) -> bool:
        """Record a join or leave; ``False`` when it changes nothing."""
        rooms = self.rooms.setdefault(namespace, set())
        if joined == (room in rooms):
            return False
        if joined:
            rooms.add(room)
        else:
            rooms.discard(room)
        self.room_changes[(namespace, room)] = joined
        return True

    def take_room_changes(self) -> dict[RoomKey, bool]:
        """The pending changes, now the caller's to write."""
        changes, self.room_changes = self.room_changes, {}
        return changes

    def put_back_room_changes(self, changes: dict[RoomKey, bool]) -> None:
        """A write failed: pending again, behind any newer change of a room."""
        for key, joined in changes.items():
            self.room_changes.setdefault(key, joined)

    def rooms_to_restore(self, namespace: str, cap: int) -> tuple[list[str], int]:
        """The saved rooms of ``namespace`` that fit ``cap`` (sorted), and how
        many did not (those are forgotten, and removed from the store)."""
        rooms = sorted(self.rooms.get(namespace, ()))
        for room in rooms[cap:]:
            self.note_room(namespace, room, False)
        return rooms[:cap], max(0, len(rooms) - cap)
