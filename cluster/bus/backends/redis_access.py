"""A start-up check of a Redis bus: reachable is optional, refusing is fatal.

A node or emitter started while Redis is away keeps retrying (an outage
heals). But a wrong password, an ACL user without a needed permission or an
untrusted TLS certificate never heal, and the bus's background retries
would only log them forever while the node stays not-ready. So the runner
and the emitter try one ``PING`` at start: :class:`~cluster.bus.errors.BusAccessDenied`
with the fix when Redis refuses us (or we refuse its certificate), nothing
when it is simply unreachable. The same round trip compares our clock with
Redis's (:mod:`cluster.bus.clock`): :class:`~cluster.bus.errors.BusClockSkew`
when they differ by more than ``max_clock_skew``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import redis

from cluster.bus.clock import check_offset, measure_offset
from cluster.bus.errors import BusAccessDenied, BusClockSkew
from session_store.redis_errors import access_problem

__all__ = ["access_problem", "check_access", "server_time"]

#: URL schemes checked (Sentinel and Cluster discover their servers later)
CHECKED_SCHEMES = ("redis", "rediss", "unix")


def check_access(url: str, options: dict[str, Any] | None = None, timeout: float = 3.0, *,
                 max_clock_skew: float | None = None, who: str = "This node") -> None:
    """``PING`` the Redis at ``url``; raise :class:`BusAccessDenied` with the
    fix if it refuses our credentials or we refuse its certificate, and
    :class:`~cluster.bus.errors.BusClockSkew` if ``max_clock_skew`` is given
    and ``who``'s clock is further than that from Redis's."""
    if urlparse(url).scheme not in CHECKED_SCHEMES:
        return
    kwargs = {"socket_connect_timeout": timeout, "socket_timeout": timeout, **(options or {})}
    client = redis.Redis.from_url(url, **kwargs)
    try:
        client.ping()
        if max_clock_skew is not None:
            measured = measure_offset(lambda: server_time(client))
            if measured is not None:
                check_offset(*measured, max_clock_skew, who)
    except BusClockSkew:
        raise
    except Exception as exc:
        problem = access_problem(exc)
        if problem is not None:
            raise BusAccessDenied(f"Cannot use the cluster bus: {problem}") from None
        # unreachable or failing for now: the bus retries with backoff
    finally:
        client.close()


def check_clock_of(client_factory: Callable[[], Any], max_clock_skew: float,
                   who: str = "This node") -> None:
    """Raise :class:`~cluster.bus.errors.BusClockSkew` if ``who``'s clock is
    further than ``max_clock_skew`` from the Redis server a client made by
    ``client_factory`` talks to: the bus's own connector, so Sentinel (the
    current master) and Redis Cluster (the channel's shard) are checked as
    a plain Redis is by :func:`check_access`. A Redis that cannot be reached
    now passes: the heartbeat's check takes over once it can be."""
    try:
        client = client_factory()
    except Exception:
        return
    try:
        measured = measure_offset(lambda: server_time(client))
        if measured is not None:
            check_offset(*measured, max_clock_skew, who)
    except BusClockSkew:
        raise
    except Exception:  # noqa: S110 - unreachable for now: checked again each heartbeat
        pass
    finally:
        client.close()


def server_time(client: Any) -> float:
    """The Redis server's clock (``TIME``), in seconds since the epoch."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000
