"""Receiver: every raw message checked, routed once, never fatal."""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

from cluster.bus.codec import Codec
from cluster.bus.receiver import Receiver
from cluster.bus.runtime import Runtime
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription, Transport

SECRET = "r" * 32


class Scripted(Transport):
    """Yields the given payloads once, then ends the subscription."""

    def __init__(self, payloads: list[Any]) -> None:
        self.payloads = payloads

    def listen(self, subscription: Subscription) -> Any:
        subscription.up()
        yield from self.payloads
        subscription.closed = True


def receiver(payloads: list[Any], handlers: dict[str, Any],
             own: list[dict[str, Any]]) -> tuple[Receiver, BusStats]:
    stats = BusStats()
    sub = Subscription(stats, NodeRegistry("me", "me", 3.0), Runtime(),
                       logging.getLogger("test"), node_timeout=3.0, max_backoff=0.05,
                       publishing=lambda: True)
    return Receiver(Scripted(payloads), sub, Codec(SECRET), stats,
                    logging.getLogger("test"), host_id="me", handlers=handlers,
                    own_emit=own.append), stats


def emit(n: int, host: str = "other", **extra: Any) -> dict[str, Any]:
    return {"method": "emit", "event": "e", "data": [n], "host_id": host, **extra}


#: one sealer: a receiving codec drops a sequence number it saw already
SEALER = Codec(SECRET)


def sealed(message: dict[str, Any], src: str = "other") -> bytes:
    return SEALER.seal(json.dumps(message), src)


def test_messages_are_routed_by_method_and_host() -> None:
    got: list[tuple[str, Any]] = []
    own: list[dict[str, Any]] = []
    def number(m: dict[str, Any]) -> Any:
        return m["data"][0] if m["method"] == "emit" else m.get("id", m.get("name"))

    handlers = {name: (lambda m, name=name: got.append((name, number(m))))
                for name in ("emit", "callback", "heartbeat")}
    rx, stats = receiver([
        sealed(emit(1)),
        sealed({"method": "callback", "host_id": "other", "sid": "s", "id": 2,
                "args": []}),  # not ours
        sealed({"method": "callback", "host_id": "me", "sid": "s", "id": 3, "args": []}),
        sealed(emit(4, "me")),  # own, unlogged: already delivered here
        sealed(emit(5, "me", lid=7)),
        sealed({"method": "heartbeat", "host_id": "other", "name": 6}),
        sealed({"method": "close_room", "host_id": "other", "room": "r"}),  # no handler
    ], handlers, own)
    rx.run()
    assert got == [("emit", 1), ("callback", 3), ("heartbeat", 6)]
    assert [m["data"][0] for m in own] == [5]
    assert stats.get("received") == 7 and stats.get("handler_errors") == 0


def test_forged_and_broken_messages_are_dropped_and_a_failing_handler_is_counted() -> None:
    seen: list[Any] = []

    def explode(message: dict[str, Any]) -> None:
        raise RuntimeError("application bug")

    rx, stats = receiver([
        b"not json",
        Codec("x" * 32).seal(json.dumps(emit(0, "evil")), "evil"),
        sealed({"method": "disconnect", "host_id": "other", "sid": "s"}),
        sealed(emit(9)),
    ], {"disconnect": explode, "emit": seen.append}, [])
    rx.run()
    assert stats.get("dropped_malformed") == 1 and stats.get("dropped_bad_signature") == 1
    assert stats.get("handler_errors") == 1
    assert [m["data"][0] for m in seen] == [9]  # the listener went on


def test_only_the_listener_itself_is_in_the_listener() -> None:
    inside: list[bool] = []
    rx, _ = receiver([sealed(emit(1))],
                     {"emit": lambda m: inside.append(rx.in_listener())}, [])
    listener = threading.Thread(target=rx.run)
    listener.start()
    listener.join(5)
    assert inside == [True]
    assert not rx.in_listener()  # this test's thread is not the listener
