"""has_binary against python-socketio's own check, on generated data."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from socketio.packet import Packet

from cluster.bus.binary_data import has_binary
from cluster.node.packets import ClusterPacket

leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                   st.text(max_size=5), st.binary(max_size=5),
                   st.builds(bytearray, st.binary(max_size=3)))
payloads = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=3), children, max_size=4),
                               st.tuples(children)),
    max_leaves=25)


@given(payloads)
def test_it_answers_as_python_socketio_does(data: Any) -> None:
    assert has_binary(data) is Packet.data_is_binary(data)


def test_the_nodes_packets_use_it() -> None:
    assert ClusterPacket(data=["up", {"blob": b"\x00"}]).packet_type == 5  # BINARY_EVENT
    assert ClusterPacket(data=["up", {"text": "x"}]).packet_type == 2  # EVENT
    assert ClusterPacket(data=["up", (b"\x00",)]).packet_type == 2  # tuples: not looked into


def test_a_structure_that_contains_itself_raises_rather_than_loops() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(RecursionError):
        has_binary(looped)
