"""Connection state recovery: replaying what a returning client missed.

Socket.IO 4.6+ semantics, across the cluster:

- every emit carries its offset (an id of the bus's recovery stream) as the
  event's last argument, and the CONNECT reply carries ``pid``;
- a client that comes back sends ``pid`` and its last ``offset``; when the
  pid is valid (any node) the connection gets its old sid, its rooms and its
  forked session back, then every packet sent to those rooms since
  ``offset`` is replayed, in order, before anything new, and the official
  client reports ``socket.recovered === true``.

The gap between "rooms restored" and "replay read" is closed by buffering:
from the moment the recovering connection is registered, packets for it are
held; the replay is read after the rooms are back, and held packets whose
offset the replay already covered are dropped, so every packet arrives
exactly once.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from socketio import packet as sio_packet
from socketio.packet import Packet

from .bus.recovery_log import OFFSET_RE

if TYPE_CHECKING:
    from .server import ClusterServer

logger = logging.getLogger("cluster.recovery")

DEFAULT_MAX_DISCONNECTION_DURATION = 120.0


@dataclass(frozen=True)
class RecoveryOptions:
    """``connection_state_recovery={...}`` of the extension.

    :param max_disconnection_duration: seconds a client may stay away and
        still recover (default 120, socket.io's default). Also how long the
        recovery stream keeps emits and how long the session stays resumable.
    :param skip_connect_handler: on a successful recovery, do not run the
        connect handler again (socket.io's ``skipMiddlewares``). Default False.
    """

    max_disconnection_duration: float = DEFAULT_MAX_DISCONNECTION_DURATION
    skip_connect_handler: bool = False

    @classmethod
    def from_option(cls, value: Any) -> "RecoveryOptions | None":
        if not value:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise TypeError(
                "connection_state_recovery takes a dict such as "
                "{'max_disconnection_duration': 120, 'skip_connect_handler': False}.")
        unknown = set(value) - {"max_disconnection_duration", "skip_connect_handler"}
        if unknown:
            raise TypeError(f"connection_state_recovery: unknown option(s) {sorted(unknown)}.")
        duration = float(value.get("max_disconnection_duration",
                                   DEFAULT_MAX_DISCONNECTION_DURATION))
        if duration <= 0:
            raise ValueError("max_disconnection_duration must be a positive number of seconds.")
        return cls(duration, bool(value.get("skip_connect_handler", False)))


@dataclass
class _Held:
    packets: list[tuple[str, Any]] = field(default_factory=list)


class PacketHold:
    """Packets for connections being recovered, held until their replay."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def start(self, eio_sid: str) -> None:
        self._held[eio_sid] = _Held()

    def holding(self, eio_sid: str) -> bool:
        return eio_sid in self._held

    def hold(self, eio_sid: str, kind: str, item: Any) -> None:
        self._held[eio_sid].packets.append((kind, item))

    def release(self, eio_sid: str) -> list[tuple[str, Any]]:
        held = self._held.pop(eio_sid, None)
        return held.packets if held is not None else []


def message_reaches(message: dict[str, Any], sid: str, namespace: str,
                    rooms: Iterable[str]) -> bool:
    """Whether a logged emit was addressed to ``sid`` in ``namespace``."""
    if message.get("method") != "emit" or (message.get("namespace") or "/") != namespace:
        return False
    skip = message.get("skip_sid")
    if skip is not None and (sid == skip or (isinstance(skip, list) and sid in skip)):
        return False
    target = message.get("room")
    if target is None:
        return True
    member_of = set(rooms) | {sid}
    if isinstance(target, list):
        return any(room in member_of for room in target)
    return target in member_of


def replay_packet(server: "ClusterServer", message: dict[str, Any], offset: str,
                  namespace: str) -> Any:
    """The EVENT packet a logged emit becomes, offset appended."""
    data = list(message.get("data") or [])
    if message.get("binary") and data:
        attachments = [base64.b64decode(item) for item in data[1:]]
        data = Packet.reconstruct_binary(data[0], attachments)
        data = list(data) if isinstance(data, list) else [data]
    return server.packet_class(sio_packet.EVENT, namespace=namespace,
                               data=[message.get("event"), *data, offset])


def _decoded(server: "ClusterServer", kind: str, item: Any) -> Any:
    if kind != "eio":
        return item
    encoded = getattr(item, "data", None)
    if not isinstance(encoded, str):
        return None  # a binary attachment
    try:
        return server.packet_class(encoded_packet=encoded)
    except (ValueError, TypeError):
        return None


def namespace_of(server: "ClusterServer", kind: str, item: Any) -> str | None:
    """The namespace of a held packet (None for a binary attachment)."""
    pkt = _decoded(server, kind, item)
    return (pkt.namespace or "/") if pkt is not None else None


def offset_of(server: "ClusterServer", kind: str, item: Any) -> str | None:
    """The offset a held packet carries, if any (text packets only)."""
    pkt = _decoded(server, kind, item)
    if pkt is None or pkt.packet_type != sio_packet.EVENT or not isinstance(pkt.data, list) \
            or pkt.attachment_count:
        return None
    last = pkt.data[-1] if len(pkt.data) > 1 else None
    return last if isinstance(last, str) and OFFSET_RE.match(last) else None


def newer(offset: str, than: str | None) -> bool:
    if than is None:
        return True
    a_ms, a_seq = (int(part) for part in offset.split("-"))
    b_ms, b_seq = (int(part) for part in than.split("-"))
    return (a_ms, a_seq) > (b_ms, b_seq)
