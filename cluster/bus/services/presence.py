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

from collections.abc import Callable
from typing import Any

from cluster.bus.services.link import BusLink

PresenceCallback = Callable[[str, Any, str], Any]


class Presence:
    """Room presence tracker of one manager (``manager.presence``).

    :param link: publishes the announcements, runs the callbacks.
    :param local_rooms: the ``(namespace, room)`` pairs with members on
        this node.
    """

    def __init__(self, link: BusLink,
                 local_rooms: Callable[[], list[tuple[str, Any]]]) -> None:
        self.link = link
        self.local_rooms = local_rooms
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
        local = {room for ns, room in self.local_rooms() if ns == namespace}
        remote = {room for (ns, room), hosts in self._remote.items()
                  if ns == namespace and hosts}
        return sorted(local | remote, key=str)

    # -- fed by the manager ---------------------------------------------------
    def local_added(self, namespace: str, room: Any) -> None:
        """``room`` got its first member on this node."""
        self._announce("add", namespace, room)
        if not self._remote.get((namespace, room)):
            self._fire("first_join", room, namespace)

    def local_removed(self, namespace: str, room: Any) -> None:
        """``room`` lost its last member on this node."""
        self._announce("remove", namespace, room)
        if not self._remote.get((namespace, room)):
            self._fire("last_leave", room, namespace)

    def handle_message(self, message: dict[str, Any]) -> None:
        """Another node's announcement."""
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

    def node_gone(self, host_id: str) -> None:
        """A node left: the lowest-id survivor reports its vanished rooms."""
        if not self.enabled:
            return
        survivors = [h for h in self.link.nodes.ids() if h != host_id]
        report = bool(survivors) and survivors[0] == self.link.host_id
        local = set(self.local_rooms())
        for key, hosts in list(self._remote.items()):
            if host_id in hosts:
                hosts.discard(host_id)
                if not hosts:
                    del self._remote[key]
                    if report and key not in local:
                        self._fire("last_leave", key[1], key[0])

    def resync(self) -> None:
        """Tell the others what lives here: after (re)subscribing, and when
        a newcomer joined (it knows nothing yet)."""
        if not self.enabled:
            return
        self.link.publish({"method": "presence", "op": "sync",
                           "host_id": self.link.host_id, "room": "",
                           "rooms": [list(r) for r in self.local_rooms()]},
                          volatile=True)

    # -- plumbing -------------------------------------------------------------
    def _announce(self, op: str, namespace: str, room: Any) -> None:
        if not self.link.write_only:
            self.link.publish({"method": "presence", "op": op,
                               "host_id": self.link.host_id, "room": room,
                               "namespace": namespace})

    def _fire(self, event: str, room: Any, namespace: str) -> None:
        for callback in list(self._callbacks):
            self.link.spawn(callback, event, room, namespace)

