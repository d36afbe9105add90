"""The last step out: seal a batch in order and write it to the transport."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cluster.bus.batch import Item, Result
from cluster.bus.codec import Codec, body_lid
from cluster.bus.transport import Transport

#: ``(lid, payload, logged, sealed_ms)``: told of every seal of a message
#: that has a ``lid`` (see :mod:`.ordered_delivery`); ``sealed_ms`` is the
#: wall clock (ms) taken before sealing, at most the envelope's ``ts``
SealWatcher = Callable[[int, bytes, bool, int], None]


class SealedSender:
    """Seals items (signing and numbering them) and sends them in one
    round trip; the outbox calls :meth:`send` for each batch.

    An item is sealed once, on its first attempt, and retried with that
    seal (see :mod:`.batch`), as long as the seal is younger than half the
    codec's ``max_age``: an older one could be dropped as too old before it
    arrives, so it is sealed again (after an outage that long, a copy of an
    attempt whose outcome was unknown may then arrive twice).

    Every seal of a message with a ``lid`` (this node's logged emits) is
    reported to :attr:`on_sealed`, before it is sent: the node recognizes
    the copies that come back by these very bytes, whichever seal of the
    message arrives.
    """

    def __init__(self, transport: Transport, codec: Codec, host_id: str) -> None:
        self.transport = transport
        self.codec = codec
        self.host_id = host_id
        self.reseal_after = codec.max_age_ms / 2000
        # reentrant: a write-only publish holds it across its retries (so
        # one thread's reconnect cannot cut another's send) and the send
        # itself takes it again; sealing (which numbers signed messages)
        # and sending happen under it, so messages leave in the order of
        # their sequence numbers whichever thread sends them
        self.lock = threading.RLock()
        #: told of each seal of a message with a ``lid`` (None: nobody)
        self.on_sealed: SealWatcher | None = None

    def send(self, items: list[Item]) -> list[Result]:
        """Publish ``items``; per item its offset (``None`` when unlogged,
        and for all when the transport keeps no stream) or the error the
        server refused it with; raises when the outcome is unknown."""
        with self.lock:
            now = time.monotonic()
            # from the first item that needs a seal on, every item is
            # sealed again: sequence numbers must grow along the batch
            start = next((i for i, item in enumerate(items)
                          if item.payload is None or now - item.sealed_at > self.reseal_after),
                         len(items))
            watcher = self.on_sealed
            for item in items[start:]:
                sealed_ms = int(time.time() * 1000)
                item.lane = self.transport.lane_of(item.channel)
                item.payload = payload = self.codec.seal(item.body, self.host_id,
                                                         logged=item.logged, lane=item.lane)
                item.sealed_at = now
                if watcher is not None:
                    lid = body_lid(item.body)
                    if lid is not None:
                        watcher(lid, payload, item.logged, sealed_ms)
            payloads = [item.payload for item in items if item.payload is not None]
            logged = [item.logged for item in items]
            channels = [item.channel for item in items]
            if any(channels):
                return self.transport.send_each(payloads, logged, channels)
            return self.transport.send_each(payloads, logged)
