"""What the RecoveryFlow tests (``test_flow_plan``, ``test_flow_finish``)
share: a real recovery stream in Redis, read the way RecoveryFlow reads it."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from typing import Any, NamedTuple

import pytest
import redis

from cluster.bus.codec import Codec, Dropped
from cluster.recovery.stream import RecoveryLog


class StreamReader:
    """The reads RecoveryFlow needs, straight from a RecoveryLog."""

    def __init__(self, log: RecoveryLog, client: Any) -> None:
        self.log, self.client = log, client

    def offset_facts(self, offset: str) -> Any:
        return self.log.offset_facts(self.client, offset)

    def page(self, offset: str, count: int) -> Any:
        return self.log.page(self.client, offset, count)

    def scan(self, offset: str, namespace: str, sid: str, rooms: Any) -> Any:
        return self.log.scan(self.client, offset, namespace, sid, rooms)


class FlowStream(NamedTuple):
    """A recovery log, the Redis client it is read with, and the codec that
    seals its entries."""

    log: RecoveryLog
    client: redis.Redis
    codec: Codec


def emit(room: str | None, n: int) -> str:
    """A bus emit of event ``e`` with ``[n]`` to ``room`` (``None``: everyone)."""
    return json.dumps({"method": "emit", "event": "e", "data": [n], "namespace": "/",
                       "room": room, "skip_sid": None, "callback": None, "host_id": "h"})


def recovery_log(channel: str, codec: Codec) -> RecoveryLog:
    """An empty recovery log (60 s window) whose entries ``codec`` opens."""

    def open_entry(payload: bytes) -> Any:
        try:
            return codec.open_archived(payload)[0]
        except Dropped:
            return None

    return RecoveryLog(channel, open_entry, window=60)


def append_sealed(log: RecoveryLog, client: Any, codec: Codec, bodies: list[str],
                  forged: Collection[int] = ()) -> list[str]:
    """Log ``bodies`` sealed by ``codec``, in one pipeline; the ones at the
    ``forged`` positions altered after sealing (their check fails). Their
    offsets."""
    log.load_script(client)
    pipe = client.pipeline(transaction=False)
    for n, body in enumerate(bodies):
        payload = codec.seal(body, "h", logged=True)
        if n in forged:
            payload = payload.replace(b'"e"', b'"x"', 1)
        log.append(pipe, payload)
    return [log.offset_from(reply) for reply in pipe.execute()]


@pytest.fixture()
def flow_stream(redis_url: str) -> Iterator[FlowStream]:
    """An empty recovery log (60 s window) on the test's Redis."""
    codec = Codec()
    client = redis.Redis.from_url(redis_url)
    yield FlowStream(recovery_log("flow", codec), client, codec)
    client.close()
