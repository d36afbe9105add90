"""Closing a node's clients spread over a window, with jitter.

Two things close all of a node's clients so that they reconnect elsewhere
(or here) and recover: a drain on SIGTERM (:mod:`cluster.runner.serve`), and
the bus when it cannot catch up exactly after a lost subscription
(:mod:`cluster.bus.catch_up`, through :meth:`ClusterServer.close_clients
<cluster.node.server.ClusterServer.close_clients>`).

A node that closes all of its clients at once sends them all to
the other nodes in the same few milliseconds: every one of them reconnects,
resumes its session and replays its missed packets at once, and a rolling
deploy of N nodes does that N times (socket.io #5413). Spreading the closes
over a window turns the storm into a steady trickle the other nodes absorb.

:func:`close_offsets` draws, for each connection, a uniformly random moment
in the window (jitter: no two drains, and no two deploys, close in the same
order or rhythm); :func:`close_spread` closes them at those moments in
batches (one batch per :data:`TICK`, so a node with 10,000 clients does not
sleep 10,000 times). The window shrinks for small nodes: it is at most
``connections / MIN_RATE`` seconds, so a node with a handful of clients
still drains in a moment (a few clients are no storm). The clients not yet
closed are served normally meanwhile (the node only refuses *new*
connections while draining), so spreading loses nothing.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from cluster import compat

__all__ = ["DEFAULT_DRAIN_SPREAD_SECONDS", "MIN_RATE", "TICK", "close_offsets", "close_spread"]

logger = logging.getLogger("cluster.node")

#: the default window (``--drain-spread-seconds``, ``CLUSTER_DRAIN_SPREAD_SECONDS``)
DEFAULT_DRAIN_SPREAD_SECONDS = 5.0
#: closes per second below which spreading is pointless: the window is at
#: most ``connections / MIN_RATE`` seconds (200 clients: 2 s at most)
MIN_RATE = 100.0
#: closes that fall within one tick are done together
TICK = 0.05


def close_offsets(count: int, window: float, rng: random.Random | None = None) -> list[float]:
    """``count`` sorted moments in ``[0, effective window)``, uniformly random;
    all 0.0 when ``window`` is 0 (close at once)."""
    effective = min(max(0.0, window), count / MIN_RATE)
    if effective <= 0.0:
        return [0.0] * count
    rng = rng or random.Random()
    return sorted(rng.uniform(0.0, effective) for _ in range(count))


def close_spread(eio: Any, window: float, sleep: Callable[[float], Any],
                 rng: random.Random | None = None) -> int:
    """Close every open Engine.IO socket of ``eio`` over ``window`` seconds;
    returns how many were closed. ``sleep`` is the server's (it yields to
    the other connections under eventlet or gevent)."""
    sockets: Sequence[tuple[str, Any]] = list(compat.open_engine_sockets(eio))
    order = list(sockets)
    (rng or random.Random()).shuffle(order)  # which client goes first is random too
    offsets = close_offsets(len(order), window, rng)
    if offsets and offsets[-1] > 0:
        logger.info("drain: closing %d connection(s) over %.1f s", len(order), offsets[-1])
    # a node that fell behind its schedule (a busy or paused process) must
    # not catch up in one burst, which is the storm this avoids: a tick
    # closes at most twice its share, and the rest of the schedule shifts
    per_tick = max(1, math.ceil(2 * len(order) * TICK / offsets[-1])) if offsets and \
        offsets[-1] > 0 else len(order)
    started = time.monotonic()
    closed = 0
    index = 0
    while index < len(order):
        wait = started + offsets[index] - time.monotonic()
        if wait > 0:
            sleep(max(wait, TICK))
        now = time.monotonic() - started
        batch = 0
        while index < len(order) and offsets[index] <= now + TICK / 2 and batch < per_tick:
            closed += _close(eio, *order[index])
            index += 1
            batch += 1
        if batch == per_tick and index < len(order) and offsets[index] <= now + TICK / 2:
            sleep(TICK)  # behind schedule: the next share in the next tick
    return closed


def _close(eio: Any, eio_sid: str, eio_socket: Any) -> int:
    try:
        # abort: no Engine.IO CLOSE packet, which clients take as "do not
        # reconnect"; a dropped transport makes them retry
        eio_socket.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)
        closed = 1
    except Exception:  # a socket closing under us is fine here
        logger.debug("connection %s already gone while draining", eio_sid[:8])
        closed = 0
    compat.forget_engine_socket(eio, eio_sid)
    return closed
