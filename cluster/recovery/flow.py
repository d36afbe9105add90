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

Reads go through the manager's recovery reader, never under the publisher's
lock, a page at a time; the replay is sent at the pace the client reads it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cluster.recovery.replay import (Replay, namespace_of, newer, offset_of, read_replay, replay_from,
                       replay_packet, trustworthy_offset)

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer

logger = logging.getLogger("cluster.node.server")

#: unread bytes past which a replay waits for its client to read (or a
#: quarter of ``max_backlog``, if lower)
REPLAY_HIGH_WATER = 256 * 1024
#: seconds a replay may wait, in all, for a client that does not read
REPLAY_STALL = 10.0
#: seconds between checks while it waits
REPLAY_PAUSE = 0.005


class RecoveryFlow:
    """The recovery steps of one server's connects (see the module doc)."""

    def __init__(self, server: "ClusterServer") -> None:
        self.server = server

    def plan(self, environ: Any, namespace: str, sid: str) -> Replay | None:
        """The bounded replay of a recovering connection, or ``None`` for a
        plain resume (the reason logged and counted)."""
        server = self.server
        sessions = server.extension.sessions if server.extension is not None else None
        if sessions is None:
            return None
        start = sessions.recovery_start(environ, namespace)
        offset = replay_from(sessions.recovery_offset(environ, namespace), start,
                             sessions.recovery_rebased(environ, namespace))
        reason = trustworthy_offset(
            offset, start,
            lambda o: bool(self._read("recovery_contains", o, default=False)),
            lambda o: bool(self._read("recovery_readable", o, default=False)))
        replay = None
        if reason is None:
            replay = read_replay(
                self._page, offset, sid, namespace,  # type: ignore[arg-type]
                sessions.saved_rooms(environ, namespace),
                max_packets=server.limits.max_replay_packets,
                max_bytes=server.limits.max_replay_bytes, pause=lambda: server.sleep(0))
            reason = replay.refused
            if replay.over_limit:
                server.counters["recovery_over_limit"] += 1
        if reason is None:
            return replay
        server.counters["recovery_failed"] += 1
        logger.info("connection %s resumed without recovery: %s", sid[:8], reason)
        return None

    def _read(self, name: str, *args: Any, default: Any) -> Any:
        read = getattr(self.server.manager, name, None)
        return read(*args) if callable(read) else default

    def _page(self, offset: str, count: int) -> Any:
        return self._read("recovery_page", offset, count, default=None)

    def finish(self, eio_sid: str, sid: str, namespace: str, offset: str,
               replay: Replay) -> None:
        """Send the replay, then what was logged since it was read, then what
        was held meanwhile (minus what the replay covered)."""
        server = self.server
        covered: str | None = None
        try:
            if not server.manager.is_connected(sid, namespace):
                return  # refused by the connect handler after all
            covered = replay.covered or offset
            self._send(eio_sid, namespace, replay.packets)
            # the few entries logged between reading the replay and the
            # connection's registration (its rooms are back now)
            limits = server.limits
            tail = read_replay(
                self._page, covered, sid, namespace, server.manager.get_rooms(sid, namespace),
                max_packets=max(1, limits.max_replay_packets - len(replay.packets)),
                max_bytes=max(1, limits.max_replay_bytes - replay.size))
            if tail.refused is not None:
                # told it recovered, it must not miss anything: it is closed
                # and recovers again from the last packet it got
                server.counters["recovery_over_limit"] += 1
                logger.warning("connection %s closed while it recovered: %s", sid[:8],
                               tail.refused)
                server.packet_hold.release(eio_sid)
                covered = None
                server.eio.disconnect(eio_sid)
                return
            self._send(eio_sid, namespace, tail.packets)
            covered = tail.covered or covered
            replayed = len(replay.packets) + len(tail.packets)
            server.counters["recoveries"] += 1
            server.counters["replayed_packets"] += replayed
            logger.info("connection %s recovered, %d missed packet(s) replayed",
                        sid[:8], replayed)
        finally:
            self.release_held(eio_sid, namespace, covered)

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
            server._deliver_packet(eio_sid, replay_packet(server, message, entry_offset,
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
                server._deliver_packet(eio_sid, item)
            else:
                server._deliver_eio_packet(eio_sid, item)
