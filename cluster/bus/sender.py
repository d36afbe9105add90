"""The last step out: seal a batch in order and write it to the transport."""
from __future__ import annotations

import threading

from cluster.bus.codec import Codec
from cluster.bus.transport import Transport


class SealedSender:
    """Seals bodies (signing and numbering them) and sends them in one
    round trip; the outbox calls :meth:`send` for each batch."""

    def __init__(self, transport: Transport, codec: Codec, host_id: str) -> None:
        self.transport = transport
        self.codec = codec
        self.host_id = host_id
        # reentrant: a write-only publish holds it across its retries (so
        # one thread's reconnect cannot cut another's send) and the send
        # itself takes it again; sealing (which numbers signed messages)
        # and sending happen under it, so messages leave in the order of
        # their sequence numbers whichever thread sends them
        self.lock = threading.RLock()

    def send(self, bodies: list[str], logged: list[bool]) -> list[str | None]:
        """Publish ``bodies``; the offsets of the ``logged`` ones (None for
        the others, and for all when the transport keeps no stream)."""
        with self.lock:
            payloads = [self.codec.seal(body, self.host_id, logged=log)
                        for body, log in zip(bodies, logged, strict=True)]
            if any(logged):
                return self.transport.send_logged(payloads, logged)
            self.transport.send(payloads)
            return [None] * len(payloads)
