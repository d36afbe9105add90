"""A python-socketio client that resumes its session on reconnect.

:class:`Client` behaves like the official JavaScript client does with
connection state recovery: it keeps the ``pid`` the server sends in the
CONNECT reply and the last offset it received, and sends both in the CONNECT
payload (merged with your ``auth``) whenever it reconnects. The server then
resumes the connection's forked session and rooms, on whichever node the
load balancer picks, and (with recovery enabled) replays missed packets.
"""

from __future__ import annotations

from typing import Any

import socketio
from socketio import packet as sio_packet

from cluster.recovery.stream import OFFSET_RE
from cluster.recovery.replay import newer

__all__ = ["Client"]


class Client(socketio.Client):
    """``socketio.Client`` plus session resume (``pid``/``offset``).

    All constructor and ``connect()`` arguments are python-socketio's.
    ``auth`` may be a dict or a callable returning one, as there; the resume
    fields are added to it on every (re)connect.

    Attributes (per namespace, ``"/"`` by default):

    - ``pid(namespace)``: the resume id the server issued, or ``None``;
    - ``offset(namespace)``: the offset of the last packet received;
    - ``recovered``: after a reconnect, ``True`` when the server restored the
      previous connection (same sid) for the default namespace.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pids: dict[str, str] = {}
        self._offsets: dict[str, str] = {}
        self._previous_sids: dict[str, str] = {}
        self._offsets_sent: set[str] = set()
        self.recovered = False

    def pid(self, namespace: str | None = None) -> str | None:
        """The resume id the server issued for ``namespace``."""
        return self._pids.get(namespace or "/")

    def offset(self, namespace: str | None = None) -> str | None:
        """The offset of the last packet received on ``namespace``."""
        return self._offsets.get(namespace or "/")

    def _handle_eio_connect(self) -> None:
        self.logger.info("Engine.IO connection established")
        self.sid = self.eio.sid
        auth = self._get_real_value(self.connection_auth) or {}
        for namespace in self.connection_namespaces:
            self._send_packet(self.packet_class(
                sio_packet.CONNECT, data=self._connect_payload(namespace, auth),
                namespace=namespace))

    def _connect_payload(self, namespace: str, auth: Any) -> Any:
        pid = self._pids.get(namespace)
        if pid is None or not isinstance(auth, dict):
            return auth
        payload: dict[str, Any] = {"pid": pid, "offset": self._offsets.get(namespace)}
        payload.update(auth)  # the application's own keys win, as in socket.io-client
        return payload

    def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        data = data if isinstance(data, dict) else {}
        sent_pid = self._pids.get(namespace)
        new_pid = data.get("pid")
        previous_sid = self._previous_sids.get(namespace)
        if namespace == "/":
            self.recovered = bool(sent_pid and previous_sid and data.get("sid") == previous_sid)
        if isinstance(new_pid, str):
            self._pids[namespace] = new_pid
        else:
            self._pids.pop(namespace, None)
        if data.get("offsets"):
            self._offsets_sent.add(namespace)
        else:
            self._offsets_sent.discard(namespace)
        if isinstance(data.get("sid"), str):
            self._previous_sids[namespace] = data["sid"]
        if not (namespace == "/" and self.recovered):
            # a fresh connection starts counting offsets again
            self._offsets.pop(namespace, None)
        super()._handle_connect(namespace, data)

    def _handle_event(self, namespace: str | None, id: Any, data: Any) -> None:
        namespace = namespace or "/"
        if id is None and namespace in self._offsets_sent and has_offset_marker(data):
            # kept here and not passed to handlers, whose signatures do not
            # expect it
            offset = data[-1]
            if offset is not None and newer(offset, self._offsets.get(namespace)):
                self._offsets[namespace] = offset
            data = data[:-1]
        super()._handle_event(namespace, id, data)


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
    return marker is None or (isinstance(marker, str) and OFFSET_RE.match(marker) is not None)
