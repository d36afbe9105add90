"""Connection state recovery: replaying what a returning client missed.

Socket.IO 4.6+ semantics, across the cluster:

- every emit carries its offset (an id of the bus's recovery stream) as the
  event's last argument, and the CONNECT reply carries ``pid``;
- a client that comes back sends ``pid`` and its last ``offset``; when the
  pid is valid (any node) the connection gets its old sid, its rooms and its
  forked session back, then every packet sent to those rooms since
  ``offset`` is replayed, in order, before anything new, and the official
  client reports ``socket.recovered === true``.

Only the client's own history is replayed: the offset must be in the
stream and no older than the session's recorded start (the stream's newest
offset when the session first connected), and nothing after it may have
been trimmed. The replay is read before the connection is accepted: Redis
filters the stream by each entry's routing fields (:mod:`.routing`), so
other users' traffic is never read here, and the replay is bounded by the
client's own history, in packets (``max_replay_packets``, default 2,000)
and bytes (``max_replay_bytes``, default 512 KiB); past a bound, or from an offset
that cannot be trusted, the client gets a plain resume (its session and
rooms, a new sid, ``recovered`` false), the reason is logged and counted
(``recovery_failed``, ``recovery_over_limit``).

The gap between "replay read" and "connection registered" is closed by
buffering: from the moment the recovering connection is registered, packets
for it are held; after the connect the few entries logged since the replay
was read are read too, and held packets whose offset the replay already
covered are dropped, so every packet arrives exactly once.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from socketio import packet as sio_packet

from cluster import compat
from cluster.recovery.offsets import Offset, is_offset, newer
from cluster.recovery.routing import ScanPage

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer
    from cluster.recovery.stream import OffsetFacts

logger = logging.getLogger("cluster.recovery.replay")

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
    def from_option(cls, value: Any) -> RecoveryOptions | None:
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


#: seconds a recovered connection's floor lasts at most (see PacketHold)
FLOOR_SECONDS = 30.0


@dataclass
class _Held:
    packets: list[tuple[str, Any]] | None = field(default_factory=list)
    #: held for a replay (a recovering connection), not only for its reply
    replaying: bool = False
    #: after the replay: ``(namespace, offset)`` at or below which a live
    #: packet was replayed already
    floor: tuple[str, str] | None = None
    until: float = 0.0


class PacketHold:
    """Packets for connections being recovered, held until their replay;
    then the live ones the replay already sent are dropped.

    A replay reads the recovery stream directly, while the listener delivers
    what Redis publishes, which may be behind it: a packet the replay sent
    can still arrive live afterwards. So once a connection's replay is out
    it gets a *floor*, the last offset the replay read in its namespace: a
    live packet of that namespace at or below it is dropped (counted in
    ``recovery_duplicates_dropped``). Packets arrive in stream order, so the
    first one above the floor ends it, and so do ``FLOOR_SECONDS``.

    :param locate: ``(kind, item) -> (offset, namespace)`` of a packet
        (``None`` where it has none).
    :param counters: where the drops are counted.
    """

    def __init__(self, locate: Callable[[str, Any], tuple[str | None, str | None]],
                 counters: dict[str, int]) -> None:
        self._held: dict[str, _Held] = {}
        self._locate = locate
        self._counters = counters
        counters.setdefault("recovery_duplicates_dropped", 0)

    def start(self, eio_sid: str, replaying: bool = False) -> None:
        """Hold ``eio_sid``'s packets: during every CONNECT, so that the
        reply goes out before what its connect handler emits, and
        (``replaying``) until the replay of a recovering connection."""
        self._held[eio_sid] = _Held(replaying=replaying)

    def replaying(self, eio_sid: str) -> bool:
        """Whether ``eio_sid`` is being recovered, its replay not out yet.

        An emit of this node that did not come back through the bus in time
        skips such a connection: the replay's tail reads it from the stream.
        A plain CONNECT's connection is held too, but has no replay: it must
        get such an emit now (held until its reply), or it never would when
        the emit does not come back at all (published before this node's
        subscription to the sid's channel was in place)."""
        held = self._held.get(eio_sid)
        return held is not None and held.packets is not None and held.replaying

    def needs_offsets(self, eio_sid: str) -> bool:
        """Whether ``eio_sid`` may get this node's logged emits only with
        their offsets: while it is :meth:`replaying`, and while its floor
        lasts after the replay.

        An emit that did not come back in time is delivered by its emitter
        without an offset, which the floor cannot tell from a packet the
        replay sent: a reconnect storm's recovered clients got 4-10 such
        emits twice (the replay's copy, then the emitter's, 0.1-0.4 s
        later). Skipped, such a connection gets the emit when it comes
        back, with its offset, which the floor drops if the replay sent it."""
        held = self._held.get(eio_sid)
        if held is None:
            return False
        if held.packets is not None:
            return held.replaying
        return held.floor is not None and time.monotonic() <= held.until

    def holding(self, eio_sid: str) -> bool:
        """Whether packets for ``eio_sid`` must go through :meth:`hold`
        (the hot path's one dict lookup)."""
        return eio_sid in self._held

    def hold(self, eio_sid: str, kind: str, item: Any) -> bool:
        """Take a packet for ``eio_sid``: True when it was held or dropped,
        False when the caller delivers it now."""
        held = self._held.get(eio_sid)
        if held is None:
            return False
        if held.packets is not None:
            held.packets.append((kind, item))
            return True
        floor = held.floor
        if floor is None or time.monotonic() > held.until:
            self._held.pop(eio_sid, None)
            return False
        offset, namespace = self._locate(kind, item)
        if offset is None or namespace != floor[0]:
            return False  # not logged, or another namespace: the floor stays
        if newer(offset, floor[1]):
            self._held.pop(eio_sid, None)  # past the replay: the floor is done
            return False
        self._counters["recovery_duplicates_dropped"] += 1
        return True

    def release(self, eio_sid: str, floor: tuple[str, str] | None = None
                ) -> list[tuple[str, Any]]:
        """The held packets; with ``floor`` (namespace, offset), later live
        packets at or below it are dropped (see the class doc)."""
        held = self._held.pop(eio_sid, None)
        if floor is not None:
            self._held[eio_sid] = _Held(packets=None, floor=floor,
                                        until=time.monotonic() + FLOOR_SECONDS)
        if held is None or held.packets is None:
            return []
        return held.packets

    def forget(self, eio_sid: str) -> None:
        """The connection is gone."""
        self._held.pop(eio_sid, None)


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
    if isinstance(rooms, (set, frozenset)) and sid in rooms:
        member_of = rooms  # prepared by the caller: no copy per message
    else:
        member_of = set(rooms) | {sid}
    if isinstance(target, list):
        return any(room in member_of for room in target)
    return target in member_of


def replay_packet(server: ClusterServer, message: dict[str, Any], offset: str,
                  namespace: str) -> Any:
    """The EVENT packet a logged emit becomes, offset appended."""
    data = list(message.get("data") or [])
    if message.get("binary") and data:
        attachments = [base64.b64decode(item) for item in data[1:]]
        data = compat.binary_event_data(data[0], attachments)
        data = list(data) if isinstance(data, list) else [data]
    return server.packet_class(sio_packet.EVENT, namespace=namespace,
                               data=[message.get("event"), *data, offset])


def _decoded(server: ClusterServer, kind: str, item: Any) -> Any:
    if kind != "eio":
        return item
    encoded = getattr(item, "data", None)
    if not isinstance(encoded, str):
        return None  # a binary attachment
    try:
        return server.packet_class(encoded_packet=encoded)
    except (ValueError, TypeError):
        return None


def locate(server: ClusterServer, kind: str, item: Any) -> tuple[str | None, str | None]:
    """``(offset, namespace)`` of a packet on its way to a client."""
    pkt = _decoded(server, kind, item)
    if pkt is None:
        return None, None
    return _offset_of_packet(pkt), pkt.namespace or "/"


def namespace_of(server: ClusterServer, kind: str, item: Any) -> str | None:
    """The namespace of a held packet (None for a binary attachment)."""
    pkt = _decoded(server, kind, item)
    return (pkt.namespace or "/") if pkt is not None else None


def offset_of(server: ClusterServer, kind: str, item: Any) -> str | None:
    """The offset a held packet carries, if any (text packets only)."""
    pkt = _decoded(server, kind, item)
    return _offset_of_packet(pkt) if pkt is not None else None


def _offset_of_packet(pkt: Any) -> str | None:
    if pkt.packet_type != sio_packet.EVENT or not isinstance(pkt.data, list) \
            or pkt.attachment_count:
        return None
    last = pkt.data[-1] if len(pkt.data) > 1 else None
    return last if is_offset(last) else None


# -- bounded replay ------------------------------------------------------------

#: entries a replay may examine in Python that turn out not to reach its
#: client, per packet allowed: the scan script filters by routing fields, so
#: only entries without them (written by an older node) or whose fields lie
#: (written by someone else) get this far
SCAN_FACTOR = 10

#: one call of the recovery stream's scan script from an offset (see
#: :meth:`cluster.recovery.stream.RecoveryLog.scan`, the namespace, sid and
#: rooms bound); ``None`` when the stream cannot be read
ScanReader = Callable[[str], "ScanPage | None"]


@dataclass
class Replay:
    """What a recovering connection is sent, read before it is accepted.

    ``refused`` says why the connection gets a plain resume instead (then
    nothing is sent); ``covered`` is the last offset read, so the packets
    held meanwhile that it covers are not sent twice. ``scanned`` counts
    the entries Redis looked at, ``checked`` those it returned (which
    may reach the client) and were checked here.
    """

    packets: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    covered: str | None = None
    size: int = 0
    scanned: int = 0
    checked: int = 0
    refused: str | None = None
    #: refused for a bound (not because the log could not be read)
    over_limit: bool = False

    def describe(self) -> str:
        """``"N packet(s) of M entries scanned, C checked"``, for the logs."""
        return (f"{len(self.packets)} packet(s) of {self.scanned} entries scanned, "
                f"{self.checked} checked")


def read_replay(read_scan: ScanReader, offset: str, sid: str, namespace: str,
                rooms: Iterable[str], *, max_packets: int, max_bytes: int,
                pause: Callable[[], Any] = lambda: None) -> Replay:
    """Collect the packets after ``offset`` that reach ``sid``, within bounds.

    Redis filters the stream by each entry's routing fields, a bounded
    number of entries per call (``pause`` runs between calls so the event
    loop serves others while a long log is read); each entry it returns is
    opened (signature checked) and matched in full here. The bounds are
    the client's own: at most ``max_packets`` packets and ``max_bytes``
    bytes, and at most ``SCAN_FACTOR * max_packets`` returned entries that
    do not reach it. The scan itself ends at the stream's end, which its
    length cap (``recovery_max_entries``) and window bound; a stream
    growing faster than it is read ends it at twice its length. Past a
    bound the replay is refused rather than cut short: a client missing
    part of its history must not be told it recovered.
    """
    replay = Replay()
    members = frozenset(rooms) | {sid}
    cursor = offset
    max_unmatched = SCAN_FACTOR * max_packets
    unmatched = 0
    scan_cap = 0
    while True:
        page = read_scan(cursor)
        if page is None:
            replay.refused = "the recovery log is unreadable"
            return replay
        for entry_offset, message, size in page.entries:
            replay.checked += 1
            if message is not None and message_reaches(message, sid, namespace, members):
                replay.packets.append((entry_offset, message))
                replay.size += size
                if len(replay.packets) > max_packets:
                    replay.refused = f"more than max_replay_packets={max_packets} packets missed"
                elif replay.size > max_bytes:
                    replay.refused = f"more than max_replay_bytes={max_bytes} bytes missed"
            else:
                unmatched += 1
                if unmatched > max_unmatched:
                    replay.refused = (
                        f"more than {max_unmatched} logged packets to check that the "
                        f"stream could not filter (SCAN_FACTOR x max_replay_packets; "
                        f"entries without routing fields, written by an older node?)")
            if replay.refused is not None:
                break
        replay.scanned += page.scanned
        if page.scanned:
            replay.covered = cursor = page.last
        scan_cap = max(scan_cap, 2 * page.length)
        if replay.refused is None and not page.done and replay.scanned > scan_cap:
            replay.refused = (f"the recovery stream grew faster than the replay read it "
                              f"({replay.scanned} entries scanned, twice its length)")
        if replay.refused is not None:
            replay.packets = []
            replay.over_limit = True
            return replay
        if page.done:
            return replay
        pause()


def replay_from(offset: Any, start: str | None, rebased: str | None) -> Any:
    """Where a replay starts: the client's offset, or, when the recovery
    stream restarted while the session lived (``rebased``, its start since:
    see :mod:`cluster.sessions.leases`) and the offset is older than that,
    the restart. The client was connected until then and missed nothing
    before it; what came after is in the new stream."""
    if rebased is None or rebased != start:
        return offset
    client, restart = Offset.parse(offset), Offset.parse(rebased)
    if client is not None and restart is not None and restart > client:
        return rebased
    return offset


def trustworthy_offset(offset: Any, start: str | None,
                       facts: Callable[[str], OffsetFacts | None]) -> str | None:
    """Why a replay from ``offset`` cannot be trusted, or ``None`` if it can.

    The offset must be one the server could have sent this session: no
    older than the session's recorded ``start`` and present in the stream
    (``start`` itself, where a client that received nothing resumes, need
    not be), and nothing after it may have been trimmed. ``facts`` reads
    both from the stream (:meth:`.stream.RecoveryLog.offset_facts`), or
    answers ``None`` when the stream could not be read, which is said as
    such (not as a missing offset).
    """
    if start is None:
        return "the session has no recorded start"
    client, first = Offset.parse(offset), Offset.parse(start)
    if client is None or first is None:
        return "malformed offset"
    if first > client:
        return "offset older than the session's start"
    found = facts(offset)
    if found is None:
        return "the recovery log is unreadable"
    if offset != start and not found.contains:
        return "offset not in the recovery log"
    if not found.readable:
        return "packets after the offset were trimmed"
    return None
