"""Lane tags balanced over the slot space, and channel names on lanes."""
from __future__ import annotations

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from cluster.bus.backends.redis_lanes import MAX_PARTITIONS, Lanes, lane_tags
from cluster.bus.channels import node_channel, room_channel
from cluster.bus.errors import BusConfigurationError


@pytest.mark.parametrize("count", [2, 3, 6, 12, 64])
def test_each_lane_hashes_into_its_own_share_of_the_slots(count: int) -> None:
    tags = lane_tags("flask-socketio", count)
    assert len(set(tags)) == count
    for lane, tag in enumerate(tags):
        slot = key_slot(f"{{{tag}}}".encode())
        assert lane * REDIS_CLUSTER_HASH_SLOTS // count <= slot
        assert slot < (lane + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    # the same on every process: names depend on nothing else
    assert lane_tags("flask-socketio", count) == tags


def test_three_primaries_with_default_slot_ranges_get_two_of_six_lanes_each() -> None:
    # redis-cli --cluster create splits the slots into equal ranges
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    lanes = Lanes("flask-socketio", 6)
    owned = [sum(1 for prefix in lanes.prefixes if low <= key_slot(prefix.encode()) <= high)
             for low, high in ranges]
    assert owned == [2, 2, 2]


def test_room_and_node_channels_take_a_lane_tag_and_say_which() -> None:
    lanes = Lanes("flask-socketio", 6)
    seen = set()
    for i in range(200):
        channel = room_channel(lanes, "/", f"user:{i}")
        lane = lanes.lane_of(channel)
        assert 1 <= lane <= 6 and channel.startswith(lanes.prefixes[lane - 1] + ":room:")
        # the channel, and everything named after its tag, share the slot
        assert key_slot(channel.encode()) == key_slot(lanes.prefixes[lane - 1].encode())
        seen.add(lane)
    assert seen == set(range(1, 7))
    assert room_channel(lanes, "/", "r") == room_channel(Lanes("flask-socketio", 6), "/", "r")
    node = node_channel(lanes, "abc123")
    assert node.endswith(":node:abc123") and lanes.lane_of(node) >= 1
    # the common channel, other names and foreign tags are lane 0
    for other in ("flask-socketio", None, "", "{flask-socketio}:room:1", "{other#1.0}:x"):
        assert lanes.lane_of(other) == 0
    # one prefix (no lanes): names as before
    assert room_channel("{flask-socketio}", "/", "r").startswith("{flask-socketio}:room:")


@pytest.mark.parametrize("count", [0, 1, MAX_PARTITIONS + 1])
def test_a_lane_count_out_of_range_is_refused_with_the_range(count: int) -> None:
    with pytest.raises(BusConfigurationError, match="redis_partitions"):
        Lanes("flask-socketio", count)


def test_a_channel_with_a_brace_is_refused() -> None:
    with pytest.raises(BusConfigurationError, match="brace"):
        Lanes("my{app}", 4)
