"""One publish batch: its items, how it is cut, and what became of each item.

A pipelined batch is not all or nothing. Redis runs every command of a
pipeline and answers each on its own: with ``maxmemory`` reached under
``noeviction`` it refuses the recovery script of a logged emit (its XADD is
a write) while it still accepts plain PUBLISHes (they need no memory). The
same split happens with a wrong-typed stream key, READONLY after a
failover, or NOSCRIPT after a restart. Resending such a batch whole, sealed
again, delivered its accepted messages once per attempt (issue 24: the
same message 13 times in 8 s). So:

* an item the server accepted is never sent again (:func:`settle`);
* a refused item is retried with its *original* seal: the same signed
  bytes, the same sequence number (the sender seals an item once, on its
  first attempt, see :mod:`.sender`). A copy that did get through (an
  attempt whose outcome is unknown because the connection broke) is then
  dropped by every receiver's replay check;
* receivers (:mod:`.codec`) accept from one sender only sequence numbers
  above the last one they saw: a lower number arriving after a higher one
  is dropped as a replay. A refused item followed by an accepted one in the
  same round trip would therefore be dead with its original seal. Two
  rules keep per-sender order and exactly-once together:

  1. a round trip never carries an unlogged item after a logged one
     (:func:`take`). Only logged items are refused while plain ones pass,
     so a refusal hits a suffix: what went through is a prefix, the
     refused suffix keeps its seals, and it is accepted exactly once, in
     order, when it goes through later (nothing behind it was sent);
  2. if a later item went through all the same (memory freed between two
     commands of one pipeline), the refused items are sealed again: an
     error reply means the command had no effect (the recovery script
     writes nothing before its XADD and publishes last), so a new seal
     cannot make a second copy. They arrive once, after that later item.

  A failure with an unknown outcome (the transport raises: the connection
  broke mid-batch) keeps every seal: the server ran a prefix of the
  pipeline, the receivers drop the copies of that prefix and take the rest.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Protocol

from cluster.bus.codec import encoded_size

#: what the transport says of one item: its offset (``None`` when not
#: logged) when the server took it, or the error it refused it with
Result = str | None | Exception


class Waiter(Protocol):
    """Someone waiting for a logged item (see :mod:`.ordered_delivery`)."""

    def wake(self) -> None: ...


class Item:
    """One queued message.

    ``payload`` is its sealed form, set by the sender on the first attempt
    and reused by every retry; ``None`` asks the sender to seal it (again).
    """

    __slots__ = ("body", "size", "volatile", "logged", "waiter", "payload", "sealed_at",
                 "queued_at", "channel", "lane")

    def __init__(self, body: str, volatile: bool, logged: bool, waiter: Waiter | None,
                 channel: str | None = None) -> None:
        self.body, self.volatile, self.logged, self.waiter = body, volatile, logged, waiter
        #: the channel it travels on (None: the common one, see :mod:`.channels`)
        self.channel = channel
        #: the lane of its channel, set by the sender as it seals (see
        #: :mod:`.backends.redis_lanes`: receivers order each lane apart)
        self.lane = 0
        self.size = encoded_size(body)
        self.payload: bytes | None = None
        self.sealed_at = 0.0
        #: monotonic time it was queued: a node paused since drops it
        self.queued_at = time.monotonic()


#: ``send_batch(items)``: one round trip; one :data:`Result` per item, in
#: order; raises when the outcome is unknown (then every item is retried)
SendBatch = Callable[[list[Item]], list[Result]]


def take(queue: collections.deque[Item], limit: int) -> list[Item]:
    """Up to ``limit`` items off ``queue``, stopping before an unlogged item
    that follows a logged one (rule 1 of the module doc)."""
    batch: list[Item] = []
    logged = False
    while queue and len(batch) < limit:
        if logged and not queue[0].logged:
            break
        item = queue.popleft()
        logged = logged or item.logged
        batch.append(item)
    return batch


class Settled:
    """What one round trip did: ``sent`` items went through, ``kept`` were
    refused (in order, to retry), ``error`` is the first refusal."""

    __slots__ = ("sent", "kept", "error", "logged_ok")

    def __init__(self, sent: int, kept: list[Item], error: Exception | None,
                 logged_ok: bool) -> None:
        self.sent, self.kept, self.error, self.logged_ok = sent, kept, error, logged_ok


def settle(batch: list[Item], results: list[Result]) -> Settled:
    """Sort a round trip's items into sent and refused (see the module doc).

    ``logged_ok``: a logged item went through (the stream takes writes).
    """
    if len(results) != len(batch):
        raise RuntimeError(f"the transport answered {len(results)} results "
                           f"for {len(batch)} messages")
    kept: list[Item] = []
    error: Exception | None = None
    logged_ok = False
    # receivers order each lane apart (see .codec), so rule 2 is per lane:
    # lanes with a refusal, and those of them where a later item went through
    refused_lanes: set[int] = set()
    after_refusal: set[int] = set()
    for item, result in zip(batch, results, strict=True):
        if isinstance(result, Exception):
            kept.append(item)
            refused_lanes.add(item.lane)
            error = error or result
        else:
            logged_ok = logged_ok or item.logged
            if item.lane in refused_lanes:
                after_refusal.add(item.lane)
    if after_refusal:
        # rule 2: their original sequence numbers now lie below one the
        # receivers saw from us, so those seals would be dropped as replays
        for item in kept:
            if item.lane in after_refusal:
                item.payload = None
    return Settled(len(batch) - len(kept), kept, error, logged_ok)


def unlog(items: list[Item]) -> int:
    """Turn the logged ``items`` into plain publishes, sealing all ``items``
    again (in order: the new seals must follow each other); returns how many
    were logged.

    Only for items the server refused (nothing of them was published), so
    the new seals cannot make a second copy. A logged seal cannot be reused:
    the signature says the message carries an offset.
    """
    count = 0
    for item in items:
        count += item.logged
        item.logged = False
        item.payload = None
    return count
