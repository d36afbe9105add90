"""Which nodes are alive, from the heartbeats they publish on the bus."""
from __future__ import annotations

import threading
import time
from typing import Any


class NodeRegistry:
    """Last heartbeat of every listening node, this one included.

    A node is dropped after ``node_timeout`` seconds of silence, or at once
    when it says goodbye. While this node's own subscription is down it hears
    nobody, so expiry is paused (``freeze``) and every peer gets a fresh grace
    period when the subscription comes back (``thaw``).
    """

    def __init__(self, host_id: str, name: str, node_timeout: float) -> None:
        self.host_id = host_id
        self.node_timeout = node_timeout
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, Any]] = {
            host_id: {"name": name, "seen": time.monotonic()}}
        # names outlive their node so that "node X left" can be logged
        self._names: dict[str, str] = {host_id: name}
        self._frozen = False

    def seen(self, host_id: str, name: str, url: str | None = None) -> bool:
        """Record a heartbeat (``url``: the node's HTTP address, when its
        heartbeat carries one); True when the node is new."""
        with self._lock:
            new = host_id not in self._nodes
            self._nodes[host_id] = {"name": name, "seen": time.monotonic(), "url": url}
            self._names[host_id] = name
        return new

    def set_own_url(self, url: str | None) -> None:
        """This node's own HTTP address (what its heartbeats advertise)."""
        with self._lock:
            self._nodes[self.host_id]["url"] = url

    def url_for_tag(self, tag: str) -> tuple[str, str | None] | None:
        """The live node whose id starts with ``tag`` (a session id's owner,
        see :mod:`cluster.node.sid_owner`): ``(host_id, url)``, or None when
        no live node has that tag. A scan of the live nodes, no Redis."""
        with self._lock:
            for host_id, info in self._nodes.items():
                if host_id.startswith(tag):
                    return host_id, info.get("url")
        return None

    def remove(self, host_id: str) -> bool:
        with self._lock:
            return self._nodes.pop(host_id, None) is not None \
                if host_id != self.host_id else False

    def freeze(self) -> None:
        self._frozen = True

    def thaw(self) -> None:
        with self._lock:
            now = time.monotonic()
            for info in self._nodes.values():
                info["seen"] = now
            self._frozen = False

    def expire(self) -> list[str]:
        """Drop silent peers; return their ids."""
        if self._frozen:
            return []
        limit = time.monotonic() - self.node_timeout
        with self._lock:
            gone = [h for h, info in self._nodes.items()
                    if info["seen"] < limit and h != self.host_id]
            for host_id in gone:
                del self._nodes[host_id]
        return gone

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def name_of(self, host_id: str) -> str:
        return self._names.get(host_id, host_id)

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [{"id": h, "name": info["name"],
                     "age": 0.0 if h == self.host_id
                     else round(now - info["seen"], 3),
                     "self": h == self.host_id, "url": info.get("url")}
                    for h, info in sorted(self._nodes.items())]

    def __len__(self) -> int:
        return len(self._nodes)
