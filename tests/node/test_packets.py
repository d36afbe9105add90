"""The node's Socket.IO packet class and its bounds."""

from __future__ import annotations

from typing import Any

import pytest


def test_a_packet_may_announce_at_most_ten_attachments() -> None:
    from cluster.node.packets import ClusterPacket

    assert ClusterPacket(encoded_packet='510-["up",{"_placeholder":true,"num":0}]'
                         ).attachment_count == 10
    with pytest.raises(ValueError, match="at most 10"):
        ClusterPacket(encoded_packet='511-["up",{"_placeholder":true,"num":0}]')
    with pytest.raises(ValueError):
        ClusterPacket(encoded_packet='59999999999-["up"]')


def test_a_node_closes_a_client_announcing_more_than_ten_attachments(
        node_factory: Any) -> None:
    from tests.harness.raw_websocket import RawWebSocket, metric

    (node,) = node_factory(message_queue=None)
    client = RawWebSocket(node)
    client.connect_and_join("lobby")
    client.send('4511-["up",{"_placeholder":true,"num":0}]')
    assert client.closed_within(10)
    client.close()
    assert metric(node, "socketio_server_events_total", "malformed_packets") == 1
