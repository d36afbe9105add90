"""Engine.IO session ids that name the node holding the session.

Every new sid a node draws (:meth:`SidMinter.mint`) is::

    <node tag: 8 hex digits> <python-engineio's random id: 20 chars> <MAC: 8 chars>

The node tag is the first 8 hex digits of the node's bus ``host_id``, so
any node finds a session's owner in its own live node list (the heartbeats
carry each node's HTTP address, :mod:`cluster.bus.services.heartbeat`),
without a Redis round trip. The MAC (HMAC-SHA256 keyed from the bus
signing secret, 48 bits) makes a sid a client made up fail the check
here, before anything is forwarded: a forged sid costs one HMAC, a stale
one (owner not in the node list) one dictionary scan, and both get the
same ``400 Invalid session`` a single node gives.

Restored Socket.IO sids (connection state recovery) are not minted again:
they keep the shape they had (see :meth:`cluster.compat.EngineServerSeam.generate_id`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["SID_LENGTH", "TAG_LENGTH", "SidMinter", "derive_key", "node_tag"]

#: hex digits of the node id at the start of every minted sid
TAG_LENGTH = 8
#: python-engineio's ids are 20 base64url characters (15 bytes)
_RANDOM_LENGTH = 20
_MAC_BYTES = 6
_MAC_LENGTH = 8
#: the length of a minted sid
SID_LENGTH = TAG_LENGTH + _RANDOM_LENGTH + _MAC_LENGTH


def derive_key(secret: str | bytes, purpose: str) -> bytes:
    """A key for one purpose, derived from the bus signing secret (so the
    sid MAC and the forwarding signature never share a key with the bus)."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.new(raw, b"socketio-cluster/" + purpose.encode(), hashlib.sha256).digest()


def node_tag(host_id: str) -> str:
    """The tag of node ``host_id`` in the sids it mints."""
    return host_id[:TAG_LENGTH].lower()


class SidMinter:
    """Mints this node's sids and reads the owner tag of any sid.

    :param host_id: this node's bus id (hex).
    :param secret: the bus signing secret, shared by every node.
    """

    def __init__(self, host_id: str, secret: str | bytes) -> None:
        self.tag = node_tag(host_id)
        self._key = derive_key(secret, "sid")

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).decode()

    def mint(self, random_id: str) -> str:
        """This node's sid built around ``random_id`` (python-engineio's)."""
        body = self.tag + random_id[:_RANDOM_LENGTH].rjust(_RANDOM_LENGTH, "A")
        return body + self._mac(body)

    def owner_tag(self, sid: str) -> str | None:
        """The tag of the node that minted ``sid``; None when ``sid`` was
        not minted by a node of this cluster (wrong shape or MAC)."""
        if len(sid) != SID_LENGTH:
            return None
        body, mac = sid[:-_MAC_LENGTH], sid[-_MAC_LENGTH:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        return body[:TAG_LENGTH]
