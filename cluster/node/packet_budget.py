"""What each Socket.IO packet a client sends costs, before it is handled.

:meth:`PacketBudget.admit` runs for every decoded packet between
:func:`cluster.node.packet_dispatch.decode_message` and the dispatch to
python-socketio's handlers, and charges it to the connection's token bucket
(:class:`cluster.node.limits.RateLimiter`; the costs and why a CONNECT costs
five events are in :mod:`cluster.node.limits`):

========================  ==============  =====================================
packet                    cost (tokens)   without the tokens
========================  ==============  =====================================
EVENT, BINARY_EVENT       1               dropped (``rate_limited_events``)
CONNECT                   5 (the first    refused with a CONNECT_ERROR
                          one: free)      (``rate_limited_events``)
DISCONNECT                1               handled, the cost taken as debt
ACK, BINARY_ACK           1               handled, the cost taken as debt
ACK for an unknown id     1 (as debt)     always dropped (``unknown_acks``)
========================  ==============  =====================================

A DISCONNECT is handled even when the tokens are gone: it only releases, it
follows a CONNECT that paid, and a dropped one would leave the client
believing it left a namespace the server keeps it in. So is an ACK for an
id this node issued: each id is answered once, and the server asked for it.
Their cost is still taken (into debt), so what the client sends next waits
for it, and any mix of packets sent ten times too fast is cut for flooding
(``flood_disconnects``), the connection closed.

An ACK whose id this node never issued to that connection, or already
resolved (answered, or expired under ``ack_timeout``), goes nowhere:
python-socketio would look it up, log a warning per packet and drop it. It
is dropped here, counted in ``unknown_acks``, logged at most once per
``LOG_WINDOW`` for the whole node, and charged.

With the rate limit off (``max_events_per_second=None``) nothing is
charged; unknown ACKs are still dropped and counted.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from socketio import packet as sio_packet

from cluster import compat
from cluster.node.limits import (
    ALLOW,
    CONNECT_COST,
    FLOOD,
    FLOOD_FACTOR,
    FLOOD_SECONDS,
    LOG_WINDOW,
    PACKET_COST,
)

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer

logger = logging.getLogger("cluster.node.server")

#: the CONNECT_ERROR payload for a CONNECT the rate limit refused
RATE_LIMITED = {"message": "Rate limit exceeded: this connection sends packets faster "
                           "than the server's max_events_per_second; wait, then "
                           "connect again"}

_ACKS = (sio_packet.ACK, sio_packet.BINARY_ACK)


class PacketBudget:
    """Charges the packets of one server's clients (see the module doc)."""

    def __init__(self, server: ClusterServer) -> None:
        self.server = server

    def admit(self, eio_sid: str, pkt: Any) -> bool:
        """Whether ``pkt`` from ``eio_sid`` is to be handled: charged, and
        refused, dropped or (after a flood) its connection closed if not."""
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            verdict = self.charge(eio_sid, CONNECT_COST, opening=True)
            if verdict == ALLOW:
                return True
            if verdict != FLOOD:
                # answered, so the client does not wait for a reply that never
                # comes; a flooder is being disconnected and gets nothing
                self.server.connects.refuse(eio_sid, pkt.namespace or "/", RATE_LIMITED)
            return False
        if kind == sio_packet.DISCONNECT:
            return self.charge(eio_sid, PACKET_COST, owed=True) == ALLOW
        if kind in _ACKS:
            admitted = self.charge(eio_sid, PACKET_COST, owed=True) == ALLOW
            if self.ack_issued(eio_sid, pkt):
                return admitted
            self.server.counters["unknown_acks"] += 1
            self.server.quiet_log.log(
                logging.WARNING, "unknown_ack", "ACK packet for an id this node never issued "
                "(or already resolved) dropped, from connection %s; counted as unknown_acks, "
                "logged at most every %g s. A client that does this is broken or hostile.",
                eio_sid[:8], LOG_WINDOW)
            return False
        return self.charge(eio_sid, PACKET_COST) == ALLOW

    def ack_issued(self, eio_sid: str, pkt: Any) -> bool:
        """Whether this node waits for the ACK ``pkt`` answers, from that
        connection in that namespace."""
        manager = self.server.manager
        sid = manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/")
        if sid is None:
            return False
        callbacks = getattr(manager, "callbacks", None)
        if not isinstance(callbacks, dict):
            return True  # a manager of the user's without python-socketio's table
        return compat.ack_pending(callbacks, sid, pkt.id)

    def charge(self, eio_sid: str, cost: float, *, owed: bool = False,
               opening: bool = False) -> str:
        """Take ``cost`` tokens from ``eio_sid``'s bucket; the verdict
        (:data:`cluster.node.limits.ALLOW` when the limit is off). A dropped
        packet is counted in ``rate_limited_events``; a flood also in
        ``flood_disconnects``, and the connection is closed."""
        server = self.server
        limiter = server.rate_limiter
        if limiter is None:
            return ALLOW
        verdict = limiter.take(eio_sid, time.monotonic(), cost, owed=owed, opening=opening)
        if verdict == FLOOD:
            # far over the limit for seconds: not a person, and dropping its
            # packets still costs the node their parsing
            server.counters["rate_limited_events"] += 1
            server.counters["flood_disconnects"] += 1
            server.quiet_log.log(
                logging.WARNING, "flood",
                "Connection %s disconnected: it sent more than %dx max_events_per_second=%g "
                "(in tokens: a CONNECT costs %g) for %g s (flood_disconnects counts these; "
                "one line per %g s).", eio_sid[:8], FLOOD_FACTOR, limiter.rate, CONNECT_COST,
                FLOOD_SECONDS, LOG_WINDOW)
            if eio_sid not in server.test_sinks:
                server.eio.disconnect(eio_sid)
        elif verdict != ALLOW:
            server.counters["rate_limited_events"] += 1
        return verdict
