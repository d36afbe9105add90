"""A python client's side of connection state recovery.

What :class:`cluster.Client` keeps between connections, per namespace, the
way the official JavaScript client does: the ``pid`` the server issued in
its CONNECT reply, the offset of the last packet received, and the sid it
had (a reconnect that gets the same sid back recovered). It sends ``pid``
and ``offset`` in the CONNECT payload of every reconnect and takes the
offset off each event it receives.
"""

from __future__ import annotations

from typing import Any

from cluster.recovery.offsets import Offset


def has_offset_marker(data: Any) -> bool:
    """Whether an event's arguments end with the server's offset marker.

    What the server says: its CONNECT reply carries ``offsets: true`` when
    connection state recovery is on; then every EVENT that asks for no ack
    ends with one more argument, its offset in the recovery stream
    (``<ms>-<seq>``), or ``None`` when it has none (delivered while the bus
    was down). Acked emits never carry one (the caller checks). So the last
    argument is the marker whenever it has one of those two forms; an event
    without (from a server that does not mark) keeps all its arguments.
    """
    if not isinstance(data, list) or len(data) < 2:
        return False
    marker = data[-1]
    return marker is None or Offset.parse(marker) is not None


class ResumeState:
    """The resume fields of one client, per namespace (see the module doc)."""

    def __init__(self) -> None:
        self.pids: dict[str, str] = {}
        self.offsets: dict[str, str] = {}
        self.previous_sids: dict[str, str] = {}
        #: namespaces whose server marks events with their offset
        self.offsets_sent: set[str] = set()
        self.recovered = False

    def connect_payload(self, namespace: str, auth: Any) -> Any:
        """The CONNECT payload: ``auth`` plus ``pid`` and ``offset`` once the
        server issued a pid (the application's own keys win, as in
        socket.io-client); ``auth`` alone when it is not a dict."""
        pid = self.pids.get(namespace)
        if pid is None or not isinstance(auth, dict):
            return auth
        payload: dict[str, Any] = {"pid": pid, "offset": self.offsets.get(namespace)}
        payload.update(auth)
        return payload

    def connected(self, namespace: str, data: Any) -> dict[str, Any]:
        """Take the CONNECT reply's data (``sid``, ``pid``, ``offsets``);
        returns it as the dict the client handles (``{}`` for anything else)."""
        reply: dict[str, Any] = data if isinstance(data, dict) else {}
        sent_pid = self.pids.get(namespace)
        new_pid = reply.get("pid")
        previous_sid = self.previous_sids.get(namespace)
        if namespace == "/":
            self.recovered = bool(sent_pid and previous_sid and reply.get("sid") == previous_sid)
        if isinstance(new_pid, str):
            self.pids[namespace] = new_pid
        else:
            self.pids.pop(namespace, None)
        if reply.get("offsets"):
            self.offsets_sent.add(namespace)
        else:
            self.offsets_sent.discard(namespace)
        if isinstance(reply.get("sid"), str):
            self.previous_sids[namespace] = reply["sid"]
        if not (namespace == "/" and self.recovered):
            # a fresh connection starts counting offsets again
            self.offsets.pop(namespace, None)
        return reply

    def received(self, namespace: str, id: Any, data: Any) -> Any:
        """An event's arguments without the offset marker, the offset kept
        (if newer than the last one); unchanged when it carries none."""
        if id is not None or namespace not in self.offsets_sent or not has_offset_marker(data):
            return data
        marker = data[-1]
        if marker is not None:
            offset = Offset.of(marker)
            last = Offset.parse(self.offsets.get(namespace))
            if last is None or offset > last:
                self.offsets[namespace] = marker
        # not passed to handlers, whose signatures do not expect it
        return data[:-1]
