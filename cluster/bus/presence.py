"""Presence: a room's first member anywhere in the cluster, and its last.

For "who is online" features: put each user's sockets in a room of their
own (``user:42``) and register a callback on every node::

    @socketio.server.manager.presence.on
    def presence(event, room, namespace):   # event: "first_join"/"last_leave"
        ...

Each node announces on the bus when a room appears or disappears *on that
node* (not on every join) and remembers which other nodes have which rooms.
The callback runs once, on the node whose change made the room appear in or
vanish from the whole cluster; when a node dies, the lowest-id survivor
reports the rooms that vanished with it. Two nodes changing the same room
within one bus round trip may both report it: treat events as hints and
keep them idempotent. Off until a callback is registered; every node must
register one (they run the same application code).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from collections.abc import Callable

if TYPE_CHECKING:  # pragma: no cover
    from cluster.bus.manager import ClusterManager

PresenceCallback = Callable[[str, Any, str], Any]


class Presence:
    """Room presence tracker of one manager (``manager.presence``)."""

    def __init__(self, manager: ClusterManager) -> None:
        self._m = manager
        self._callbacks: list[PresenceCallback] = []
        self._remote: dict[tuple[str, Any], set[str]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._callbacks)

    def on(self, callback: PresenceCallback) -> PresenceCallback:
        """Register ``callback(event, room, namespace)``; returns it, so it
        can be used as a decorator."""
        self._callbacks.append(callback)
        return callback

    def rooms(self, namespace: str = "/") -> list[Any]:
        """Rooms known to have members somewhere in the cluster."""
        local = {room for ns, room in self._local_rooms() if ns == namespace}
        remote = {room for (ns, room), hosts in self._remote.items()
                  if ns == namespace and hosts}
        return sorted(local | remote, key=str)

    # -- fed by the manager ---------------------------------------------------
    def _local_added(self, namespace: str, room: Any) -> None:
        self._announce("add", namespace, room)
        if not self._remote.get((namespace, room)):
            self._fire("first_join", room, namespace)

    def _local_removed(self, namespace: str, room: Any) -> None:
        self._announce("remove", namespace, room)
        if not self._remote.get((namespace, room)):
            self._fire("last_leave", room, namespace)

    def _handle_message(self, message: dict[str, Any]) -> None:
        if not self.enabled:
            return
        host, op = message["host_id"], message["op"]
        if op == "sync":
            for hosts in self._remote.values():
                hosts.discard(host)
            for ns, room in message.get("rooms") or ():
                self._remote.setdefault((ns, room), set()).add(host)
            return
        key = (message.get("namespace") or "/", message["room"])
        if op == "add":
            self._remote.setdefault(key, set()).add(host)
        else:
            known = self._remote.get(key)
            if known is not None:
                known.discard(host)
                if not known:
                    del self._remote[key]

    def _node_gone(self, host_id: str) -> None:
        if not self.enabled:
            return
        survivors = [h for h in self._m._nodes.ids() if h != host_id]
        report = bool(survivors) and survivors[0] == self._m.host_id
        local = set(self._local_rooms())
        for key, hosts in list(self._remote.items()):
            if host_id in hosts:
                hosts.discard(host_id)
                if not hosts:
                    del self._remote[key]
                    if report and key not in local:
                        self._fire("last_leave", key[1], key[0])

    def _on_subscribed(self) -> None:
        if self.enabled:
            self._sync()

    def _node_joined(self) -> None:
        # the newcomer knows nothing yet: tell it what lives here
        if self.enabled:
            self._sync()

    # -- plumbing -------------------------------------------------------------
    def _sync(self) -> None:
        self._m._publish({"method": "presence", "op": "sync",
                          "host_id": self._m.host_id, "room": "",
                          "rooms": [list(r) for r in self._local_rooms()]},
                         volatile=True)

    def _announce(self, op: str, namespace: str, room: Any) -> None:
        if not self._m.write_only:
            self._m._publish({"method": "presence", "op": op,
                              "host_id": self._m.host_id, "room": room,
                              "namespace": namespace})

    def _fire(self, event: str, room: Any, namespace: str) -> None:
        for callback in list(self._callbacks):
            self._m._runtime.spawn(self._m._safe_call, callback, event, room,
                                   namespace)

    def _local_rooms(self) -> list[tuple[str, Any]]:
        rooms = self._m.rooms
        for _ in range(10):
            try:
                return [(ns, room) for ns, table in list(rooms.items())
                        for room, members in list(table.items())
                        if room is not None and members
                        and not (len(members) == 1 and room in members)]
            except RuntimeError:  # resized by another thread: copy again
                continue
        return []
