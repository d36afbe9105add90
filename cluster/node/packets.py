"""The Socket.IO packet class of a node: python-socketio's, with bounds.

python-socketio accepts any attachment count a binary packet announces (up
to ten digits) and keeps every attachment that follows until the count is
reached, so one client could make the node hold an unbounded number of
1 MB attachments without a single event reaching the rate limit.
socket.io-parser allows at most 10; so does :class:`ClusterPacket`. A packet
announcing more is malformed: the server counts it and closes the client.

Its ``data_is_binary`` is :func:`cluster.bus.binary_data.has_binary`: the
same answer as python-socketio's, in about half the time.
"""

from __future__ import annotations

from typing import Any

from socketio import packet as sio_packet

from cluster.bus.binary_data import has_binary

#: socket.io-parser's limit of binary attachments per packet
MAX_ATTACHMENTS = 10


class ClusterPacket(sio_packet.Packet):  # type: ignore[misc]  # python-socketio is untyped
    """``socketio.packet.Packet`` refusing more than ``MAX_ATTACHMENTS``."""

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        return has_binary(data)

    def decode(self, encoded_packet: Any) -> Any:
        attachments = super().decode(encoded_packet)
        if attachments and attachments > MAX_ATTACHMENTS:
            raise ValueError(
                f"a packet may carry at most {MAX_ATTACHMENTS} binary attachments "
                f"(announced {attachments})")
        return attachments
