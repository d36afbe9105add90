"""Room and node channels spread over a Redis Cluster's shards, in lanes.

With one lane (``redis_partitions=1``, the default) every room and node
channel carries the common channel's hash tag (``{<channel>}:room:...``), so
the whole bus lives in one slot, on one shard: one shard connection keeps
every channel in publish order, and the recovery script may append and
SPUBLISH there. That shard then carries the whole cluster's traffic.

With ``redis_partitions=P`` above 1, a room's (or a node's) channel takes
the hash tag of one of ``P`` *lanes*, chosen by its digest, and each lane's
tag is chosen so that its slot falls in its own ``1/P`` of the slot space
(``{<channel>#<lane>.<n>}``, the first ``n`` that lands there). Redis
Cluster gives each primary contiguous slot ranges of about equal size, so
with ``P`` a multiple of the number of primaries every primary owns about
``P / primaries`` lanes: naive tags (``{<channel>#0}``, ``{<channel>#1}``...)
hash where CRC16 puts them, and with 6 lanes on 3 primaries one primary
often owns three of them. The common channel (broadcasts, heartbeats,
presence, cluster queries) keeps its own tag.

What a node pays: one pub/sub connection per primary that owns a lane it
follows (:class:`~.redis_shards.ShardedPushes`), one publishing connection
per primary it sends to. What it gives up: messages of one sender on two
lanes may arrive in either order (each lane keeps its own), so the codec
counts sequence numbers per sender and lane (:mod:`cluster.bus.codec`).

Every process of a cluster must use the same ``P``, emitters included: a
room's channel name depends on it. The first process to connect records
``P`` in Redis (:data:`AGREEMENT_SUFFIX`); one that disagrees refuses to
start (:meth:`Lanes.check_agreement`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from cluster.bus.errors import BusConfigurationError

__all__ = ["AGREEMENT_SUFFIX", "AGREEMENT_TTL", "MAX_PARTITIONS", "Lanes", "agreement_key",
           "check_agreement", "lane_tags"]

#: most lanes a bus may have (each costs a connection per primary at most,
#: and nothing when none of its rooms has a local member)
MAX_PARTITIONS = 1024
#: the key (``{<channel>}<suffix>``, in the common channel's slot) that
#: records the lane count every process of the cluster uses
AGREEMENT_SUFFIX = ":partitions"
#: seconds the record lives without a node refreshing it (a node does at
#: every heartbeat check): after a full stop the count may change
AGREEMENT_TTL = 120


def lane_tags(channel: str, count: int) -> tuple[str, ...]:
    """The hash tag of each of ``count`` lanes of ``channel``: lane ``k``'s
    tag hashes into the ``k``-th of ``count`` equal parts of the slot space."""
    tags = []
    for lane in range(count):
        low = lane * REDIS_CLUSTER_HASH_SLOTS // count
        high = (lane + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        suffix = 0
        while True:
            tag = f"{channel}#{lane}.{suffix}"
            if low <= key_slot(tag.encode()) < high:
                break
            suffix += 1  # about `count` tries on average: CRC16 is uniform
        tags.append(tag)
    return tuple(tags)


@dataclasses.dataclass(frozen=True)
class Lanes:
    """The lanes of one bus channel (hashable: room channel names are cached
    by it, see :func:`cluster.bus.channels.room_channel`).

    :param channel: the common channel's name (no ``{`` or ``}``).
    :param count: how many lanes (2 to :data:`MAX_PARTITIONS`).
    """

    channel: str
    count: int
    prefixes: tuple[str, ...] = dataclasses.field(init=False, compare=False, repr=False)
    _lane_by_prefix: dict[str, int] = dataclasses.field(
        init=False, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if not 2 <= self.count <= MAX_PARTITIONS:
            raise BusConfigurationError(
                f"redis_partitions={self.count!r}: use 1 (one slot, the default) up "
                f"to {MAX_PARTITIONS}, ideally a multiple of the Redis Cluster's primaries.")
        if "{" in self.channel or "}" in self.channel:
            raise BusConfigurationError(
                f"The bus channel {self.channel!r} contains a brace, which Redis Cluster "
                f"reads as a hash tag: choose a channel name without '{{' or '}}'.")
        prefixes = tuple(f"{{{tag}}}" for tag in lane_tags(self.channel, self.count))
        object.__setattr__(self, "prefixes", prefixes)
        object.__setattr__(self, "_lane_by_prefix",
                           {prefix: lane + 1 for lane, prefix in enumerate(prefixes)})

    def prefix(self, digest: str) -> str:
        """What the channel of a room or node with this hex ``digest`` starts
        with: its lane's hash tag."""
        return self.prefixes[int(digest[:8], 16) % self.count]

    def lane_of(self, channel: str | None) -> int:
        """The lane ``channel`` travels in: 1 to ``count``; 0 for the common
        channel (and anything not named by these lanes)."""
        if not channel or channel[0] != "{":
            return 0
        end = channel.find("}")
        return self._lane_by_prefix.get(channel[:end + 1], 0) if end > 0 else 0

    @property
    def common(self) -> str:
        """The common channel as Redis Cluster sees it: its own hash tag."""
        return f"{{{self.channel}}}"

    def check_agreement(self, client: Any) -> None:
        """Record this lane count for the cluster, or make sure it is the one
        recorded (see the module doc); refreshes the record's lifetime."""
        check_agreement(client, self.channel, self.count)


def agreement_key(channel: str) -> str:
    """Where the lane count of ``channel``'s cluster is recorded (in the
    common channel's slot)."""
    return f"{{{channel}}}{AGREEMENT_SUFFIX}"


def check_agreement(client: Any, channel: str, count: int) -> None:
    """:meth:`Lanes.check_agreement` for ``count`` lanes of ``channel``
    (1 included: a process with one lane must not join a cluster with more)."""
    key = agreement_key(channel)
    if client.set(key, str(count), nx=True, ex=AGREEMENT_TTL):
        return
    recorded = client.get(key)
    text = recorded.decode("ascii", "replace") if isinstance(recorded, bytes) else str(recorded)
    if recorded is not None and text != str(count):
        raise BusConfigurationError(
            f"This process uses redis_partitions={count} but the cluster's other "
            f"processes use {text} (recorded at {key!r} in Redis): a room's channel "
            f"depends on it, so messages would be lost. Give every node and emitter "
            f"the same redis_partitions. To change it, stop every process, wait "
            f"{AGREEMENT_TTL} s (or delete that key) and start them all with the new value.")
    client.expire(key, AGREEMENT_TTL)
