"""How a recovering connection is connected: checked, replayed, released.

The server hands each CONNECT that presents a resumable ``pid`` (with
connection state recovery on) to :class:`RecoveryFlow`:

1. :meth:`~RecoveryFlow.plan`, before the connection is accepted: is the
   client's offset one of its own history (see
   :func:`cluster.recovery.replay.trustworthy_offset`), and does what it missed fit
   ``max_replay_packets`` and ``max_replay_bytes``? If not, the connection
   is a plain resume, the reason logged and counted;
2. :meth:`~RecoveryFlow.finish`, once it is registered: the replay goes
   out, then what was logged since the replay was read, then the packets
   held meanwhile that the replay did not cover.

Reads go through the bus's recovery reader (``bus_features(manager).recovery``,
handed in as a callable: this package never imports the bus), never under
the publisher's lock, a page at a time; the replay is sent at the pace the
client reads it.

:meth:`~RecoveryFlow.begin` and :meth:`~RecoveryFlow.end` wrap
python-socketio's handling of a CONNECT: the first restores the old sid
and starts holding live packets, the second replays and releases them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cluster.recovery.offsets import newer
from cluster.recovery.replay import (
    Replay,
    namespace_of,
    offset_of,
    read_replay,
    replay_from,
    replay_packet,
    trustworthy_offset,
)
from cluster.recovery.routing import ScanPage

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer
    from cluster.recovery.stream import OffsetFacts
    from cluster.sessions.connection_sessions import ConnectionSessions

logger = logging.getLogger("cluster.node.server")

#: unread bytes past which a replay waits for its client to read (or a
#: quarter of ``max_backlog``, if lower)
REPLAY_HIGH_WATER = 256 * 1024
#: seconds a replay may wait, in all, for a client that does not read
REPLAY_STALL = 10.0
#: seconds between checks while it waits
REPLAY_PAUSE = 0.005
#: seconds a recovering connection waits for its rooms' live traffic to
#: reach this node (see :meth:`RecoveryFlow.finish`) before it is closed to
#: recover again
ROOMS_LIVE_WAIT = 10.0


class RecoveryReader(Protocol):
    """The reads of the recovery stream a replay needs (what the bus's
    ``bus_features(manager).recovery`` offers; defaults when unreadable)."""

    def offset_facts(self, offset: str) -> OffsetFacts | None: ...
    def scan(self, offset: str, namespace: str, sid: str, rooms: Iterable[Any]
             ) -> ScanPage | None: ...


@dataclass(frozen=True)
class Attempt:
    """One CONNECT as :meth:`RecoveryFlow.begin` found it."""

    #: the old sid the connection gets back (recovering), else None
    sid: str | None = None
    replay: Replay | None = None
    #: where the client's replay starts
    offset: str | None = None

    @property
    def recovering(self) -> bool:
        return self.replay is not None and self.sid is not None and self.offset is not None


class RecoveryFlow:
    """The recovery steps of one server's connects (see the module doc).

    :param server: the node's server (limits, counters, packet hold,
        delivery, its Engine.IO server).
    :param reader: the bus's recovery reader now (``None``: emits are not
        logged); asked at each use, as the manager may be replaced before
        the first connection.
    :param await_rooms: ``(namespace, rooms, timeout) -> bool``, whether the
        live traffic of those rooms reaches this node, waited for up to
        ``timeout`` seconds (the bus's ``await_rooms``).
    """

    def __init__(self, server: ClusterServer,
                 reader: Callable[[], RecoveryReader | None],
                 await_rooms: Callable[[str, list[Any], float], bool]) -> None:
        self.server = server
        self.reader = reader
        self.await_rooms = await_rooms

    # -- around python-socketio's CONNECT --------------------------------------

    def begin(self, eio_sid: str, namespace: str, environ: Any,
              sessions: ConnectionSessions | None, restore_sid: str | None) -> Attempt:
        """Before the CONNECT is handled: plan the replay of a connection that
        resumes a session whose sid was ``restore_sid``, restore that sid,
        and hold what the connect handler emits until the reply is out
        (clients then see "connected" before its first event)."""
        server = self.server
        attempt = Attempt()
        if sessions is not None and environ is not None:
            if restore_sid is not None and server.manager.is_connected(restore_sid, namespace):
                restore_sid = None  # never two live connections with one sid
            replay = None
            if restore_sid is not None:
                replay = self.plan(environ, namespace, restore_sid, sessions)
            attempt = Attempt(restore_sid, replay, sessions.recovery_offset(environ, namespace))
            if replay is not None:
                sessions.mark_recovered(environ)
                server.eio.restore_next_id(restore_sid)
        server.packet_hold.start(eio_sid, replaying=attempt.recovering)
        return attempt

    def end(self, eio_sid: str, namespace: str, attempt: Attempt) -> None:
        """After the CONNECT was handled: replay (if it recovered) and
        release what was held."""
        self.server.eio.restore_next_id(None)
        if attempt.recovering:
            self.finish(eio_sid, attempt.sid, namespace, attempt.offset,  # type: ignore[arg-type]
                        attempt.replay)  # type: ignore[arg-type]
        else:
            self.release_held(eio_sid, namespace, covered=None)

    def marks_offsets(self) -> bool:
        """Whether events carry their offset as the last argument (the CONNECT
        reply then says ``offsets: true``, which tells cluster.Client)."""
        return self.server.recovery is not None and self.reader() is not None

    def skips_connect_handler(self, sessions: ConnectionSessions, environ: Any) -> bool:
        """Whether a recovered connection skips the connect handler
        (``skip_connect_handler``, socket.io's ``skipMiddlewares``)."""
        recovery = self.server.recovery
        return bool(recovery is not None and recovery.skip_connect_handler
                    and sessions.is_recovered(environ))

    # -- the steps -------------------------------------------------------------

    def plan(self, environ: Any, namespace: str, sid: str,
             sessions: ConnectionSessions) -> Replay | None:
        """The bounded replay of a recovering connection, or ``None`` for a
        plain resume (the reason logged and counted)."""
        server = self.server
        reader = self.reader()
        start = sessions.recovery_start(environ, namespace)
        offset = replay_from(sessions.recovery_offset(environ, namespace), start,
                             sessions.recovery_rebased(environ, namespace))
        reason = trustworthy_offset(
            offset, start, lambda o: reader.offset_facts(o) if reader is not None else None)
        replay = None
        if reason is None:
            rooms = sessions.saved_rooms(environ, namespace)
            replay = read_replay(
                self._scanner(namespace, sid, rooms), offset, sid, namespace, rooms,
                max_packets=server.limits.max_replay_packets,
                max_bytes=server.limits.max_replay_bytes, pause=lambda: server.sleep(0))
            self._count(replay)
            reason = replay.refused
            if replay.over_limit:
                server.counters["recovery_over_limit"] += 1
        if reason is None:
            return replay
        server.counters["recovery_failed"] += 1
        detail = f" ({replay.describe()})" if replay is not None else ""
        logger.info("connection %s resumed without recovery: %s%s", sid[:8], reason, detail)
        return None

    def _scanner(self, namespace: str, sid: str, rooms: Iterable[Any]
                 ) -> Callable[[str], ScanPage | None]:
        """One scan call of the recovery stream for this client, from an offset."""
        members = list(rooms)

        def scan(offset: str) -> ScanPage | None:
            reader = self.reader()
            return reader.scan(offset, namespace, sid, members) if reader is not None else None
        return scan

    def _count(self, replay: Replay) -> None:
        """Entries scanned in Redis and checked here, for the metrics."""
        counters = self.server.counters
        counters["replay_entries_scanned"] = counters.get("replay_entries_scanned", 0) \
            + replay.scanned
        counters["replay_entries_checked"] = counters.get("replay_entries_checked", 0) \
            + replay.checked

    def finish(self, eio_sid: str, sid: str, namespace: str, offset: str,
               replay: Replay) -> None:
        """Send the replay, then what was logged since it was read, then what
        was held meanwhile (minus what the replay covered)."""
        server = self.server
        covered: str | None = None
        try:
            if not server.manager.is_connected(sid, namespace):
                return  # refused by the connect handler after all
            rooms = server.manager.get_rooms(sid, namespace)
            if not self.await_rooms(namespace, rooms, ROOMS_LIVE_WAIT):
                # the tail below must be read after the rooms' traffic
                # arrives live, or what is published in between reaches
                # neither; nothing was sent yet, so the client recovers
                # again from the same offset
                server.counters["recovery_rooms_late"] += 1
                self._close(eio_sid, sid, "its rooms' traffic did not reach this node "
                            f"within {ROOMS_LIVE_WAIT:g} s")
                return
            covered = replay.covered or offset
            self._send(eio_sid, namespace, replay.packets)
            # the entries logged between reading the replay and the moment
            # the rooms' traffic reached this node (its rooms are back now)
            limits = server.limits
            tail = read_replay(
                self._scanner(namespace, sid, rooms), covered, sid, namespace, rooms,
                max_packets=max(1, limits.max_replay_packets - len(replay.packets)),
                max_bytes=max(1, limits.max_replay_bytes - replay.size))
            self._count(tail)
            if tail.refused is not None:
                # told it recovered, it must not miss anything: it is closed
                # and recovers again from the last packet it got
                server.counters["recovery_over_limit"] += 1
                covered = None
                self._close(eio_sid, sid, tail.refused)
                return
            self._send(eio_sid, namespace, tail.packets)
            covered = tail.covered or covered
            replayed = len(replay.packets) + len(tail.packets)
            server.counters["recoveries"] += 1
            server.counters["replayed_packets"] += replayed
            logger.info("connection %s recovered, %d missed packet(s) replayed (%d entries "
                        "scanned, %d checked)", sid[:8], replayed,
                        replay.scanned + tail.scanned, replay.checked + tail.checked)
        finally:
            self.release_held(eio_sid, namespace, covered)

    def _close(self, eio_sid: str, sid: str, reason: str) -> None:
        """Close a connection told it recovered that could not be given
        everything it missed; it recovers again from the last packet it got."""
        logger.warning("connection %s closed while it recovered: %s", sid[:8], reason)
        # closed before its held packets are dropped: none may reach the
        # client, whose next recovery starts from the last one it got
        self.server.eio.disconnect(eio_sid)
        self.server.packet_hold.release(eio_sid)

    def _send(self, eio_sid: str, namespace: str,
              packets: list[tuple[str, dict[str, Any]]]) -> None:
        """Send replayed packets as fast as the client takes them: past
        ``REPLAY_HIGH_WATER`` unread bytes the replay waits for it to read
        (so a replay never runs into ``max_backlog`` on its own), for at
        most ``REPLAY_STALL`` seconds in all, after which the backlog limit
        judges the client like any other."""
        server = self.server
        high_water = min(REPLAY_HIGH_WATER, server.eio.max_backlog // 4)
        stall_until: float | None = None
        for entry_offset, message in packets:
            server.deliver_packet(eio_sid, replay_packet(server, message, entry_offset,
                                                          namespace))
            while server.eio.unread_bytes(eio_sid) > high_water:
                now = time.monotonic()
                stall_until = stall_until or now + REPLAY_STALL
                if now >= stall_until:
                    break
                server.sleep(REPLAY_PAUSE)

    def release_held(self, eio_sid: str, namespace: str, covered: str | None) -> None:
        """Send what was held during a connect; drop it if the connect failed."""
        server = self.server
        sid = server.manager.sid_from_eio_sid(eio_sid, namespace)
        connected = sid is not None and server.manager.is_connected(sid, namespace)
        # after a replay, live packets it already sent are dropped too
        floor = (namespace, covered) if connected and covered is not None else None
        for kind, item in server.packet_hold.release(eio_sid, floor=floor):
            if not connected and namespace_of(server, kind, item) == namespace:
                continue  # refused: its connect handler's emits go nowhere
            held_offset = offset_of(server, kind, item)
            if covered is not None and held_offset is not None and not newer(held_offset, covered):
                continue  # the replay already delivered it
            if kind == "pkt":
                server.deliver_packet(eio_sid, item)
            else:
                server.deliver_eio_packet(eio_sid, item)
