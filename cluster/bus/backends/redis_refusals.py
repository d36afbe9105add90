"""What a Redis reply to the bus's publisher means: a refusal that sends
the publisher elsewhere (a failover, a moved slot), and where to.

Kept apart from :mod:`.redis_transport` so that the rules can be read (and
tested) on their own.
"""
from __future__ import annotations

from typing import Any

import redis

__all__ = ["moved_to", "moves_us", "raise_refused"]

#: refusals after which the publisher reconnects (and rediscovers the master):
#: a Sentinel failover made our server a replica (READONLY); on Redis
#: Cluster the channel's slot moved to another primary (MOVED: a failover,
#: whose old primary, still up, refuses the recovery script's keys), or the
#: cluster is between primaries (CLUSTERDOWN, TRYAGAIN)
_RECONNECT_ON = (redis.exceptions.ReadOnlyError, redis.exceptions.ConnectionError,
                 redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                 redis.exceptions.TryAgainError)

#: the same refusals as error replies of a plain client's pipeline, which
#: older redis-py (5.0) leaves as a ResponseError naming them
_RECONNECT_REPLIES = ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN", "READONLY")


def moves_us(reply: Any) -> bool:
    """Whether a pipeline reply says the publisher must reconnect."""
    if isinstance(reply, _RECONNECT_ON):
        return True
    return isinstance(reply, redis.exceptions.ResponseError) \
        and str(reply).startswith(_RECONNECT_REPLIES)


def moved_to(reply: Any) -> tuple[str, int] | None:
    """The primary a ``MOVED`` reply names (``MOVED <slot> <host>:<port>``;
    redis-py's MovedError, or a plain ResponseError from older redis-py)."""
    if isinstance(reply, redis.exceptions.MovedError):
        return str(reply.host), int(reply.port)
    if not isinstance(reply, redis.exceptions.ResponseError):
        return None
    parts = str(reply).split()
    if len(parts) != 3 or parts[0] != "MOVED":
        return None
    host, _, port = parts[2].rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def raise_refused(results: list[str | None | Exception]) -> list[str | None]:
    """``results`` of :meth:`.redis_transport.RedisTransport.send_each`, raising the first
    refusal (for callers that want all or nothing)."""
    offsets: list[str | None] = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        offsets.append(result)
    return offsets
