"""Replays and forged offsets on a real Redis, against real nodes (issue 16,
part 5): a signed message captured before a node restarted is dropped by the
restarted node, and an offset the sender did not sign for is rejected."""
from __future__ import annotations

import json
import time
from typing import Any

from cluster.bus.codec import Codec
from tests.bus.conftest import wait_nodes
from tests.bus.loopback import wait_for
from tests.harness.fixtures import BUS_SIGNING_SECRET

RECOVERY = ["--recovery-window", "60"]
CHANNEL = "flask-socketio"
#: the codec's default max_clock_skew, in ms
SKEW_MS = 2000


def stats(recorder: Any) -> dict[str, Any]:
    return recorder.call("stats")["stats"]


def payloads(recorder: Any, count: int = 1) -> list[Any]:
    """The ``relayed`` payloads (their offset, the last argument, dropped)."""
    return [data[0] for data in recorder.wait_event("relayed", count)]


def capture_logged_emit(redis_server: Any, send: Any) -> tuple[bytes, bytes]:
    """The channel and raw bytes of the first logged (offset-prefixed)
    message ``send`` causes, on any of the bus's channels (a room's emit
    travels on the room's own, see cluster.bus.channels)."""
    raw = redis_server.client(socket_timeout=5)
    pubsub = raw.pubsub()
    pubsub.psubscribe(f"{CHANNEL}*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    send()
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage" and message["data"].startswith(b"@"):
                return bytes(message["channel"]), bytes(message["data"])
        raise AssertionError("no logged emit was published")
    finally:
        pubsub.close()
        raw.close()


def test_a_captured_message_replayed_to_a_restarted_node_is_dropped(
        bus_nodes: Any, connect: Any, redis_server: Any) -> None:
    n1, n2 = bus_nodes(2, extra_args=RECOVERY)
    a, b = connect(n1), connect(n2)
    wait_nodes(a, 2)
    b.call("join", {"room": "r"})
    channel, captured = capture_logged_emit(
        redis_server, lambda: a.call("relay", {"to": "r", "payload": "once"}))
    assert payloads(b) == ["once"]
    offset, _, envelope = captured[1:].partition(b"@")
    sealed_at = json.loads(envelope)["ts"]
    # n2 restarts; the capture predates its start by more than the clock skew
    n2.stop()
    while time.time() * 1000 < sealed_at + SKEW_MS + 100:
        time.sleep(0.05)  # waits for the clock to pass a point, not for an event
    n2.start()
    b2 = connect(n2)
    wait_nodes(b2, 2)
    b2.call("join", {"room": "r"})
    before = stats(b2)["dropped_replayed"]
    publisher = redis_server.client()
    try:
        # replayed where it travelled: n2, which follows room r, hears it
        assert publisher.publish(channel, captured) == 1
    finally:
        publisher.close()
    wait_for(lambda: stats(b2)["dropped_replayed"] == before + 1, timeout=5)
    # the next genuine emit still arrives, so the replay was not just slow
    a.call("relay", {"to": "r", "payload": "fresh"})
    assert payloads(b2) == ["fresh"]
    assert offset  # it carried its genuine offset, and still counted as a replay


def test_a_forged_offset_is_rejected(bus_nodes: Any, connect: Any, redis_server: Any) -> None:
    (n1,) = bus_nodes(1, extra_args=RECOVERY)
    b = connect(n1)
    b.call("join", {"room": "r"})
    # a correctly signed message this node has not seen (as one it missed
    # while its subscription was down), published with offsets its sender
    # never signed for: the far-future offset, none at all, and one
    # on a message that was not logged
    sender = Codec(BUS_SIGNING_SECRET)
    body = json.dumps({"method": "emit", "event": "relayed", "data": ["forged"],
                       "binary": False, "namespace": "/", "room": "r", "skip_sid": None,
                       "callback": None, "host_id": "missed-sender"})
    publisher = redis_server.client()
    try:
        before = stats(b)["dropped_bad_offset"]
        publisher.publish(CHANNEL, b"@99999999999999-0@" + sender.seal(body, "missed", logged=True))
        publisher.publish(CHANNEL, sender.seal(body, "missed", logged=True))
        publisher.publish(CHANNEL, b"@1-0@" + sender.seal(body, "missed"))
        wait_for(lambda: stats(b)["dropped_bad_offset"] == before + 3, timeout=5)
        # tampering with the signed "logged" flag breaks the signature instead
        flipped = json.loads(sender.seal(body, "missed"))
        flipped["log"] = 1
        bad_sig = stats(b)["dropped_bad_signature"]
        publisher.publish(CHANNEL, f"@{flipped['ts']}-0@{json.dumps(flipped)}".encode())
        wait_for(lambda: stats(b)["dropped_bad_signature"] == bad_sig + 1, timeout=5)
        # the same message with the offset Redis could have stamped goes through
        genuine = sender.seal(body.replace("forged", "plausible"), "missed", logged=True)
        stamped = json.loads(genuine)["ts"]
        publisher.publish(CHANNEL, f"@{stamped}-0@".encode() + genuine)
    finally:
        publisher.close()
    assert b.wait_event("relayed") == [["plausible", f"{stamped}-0"]]
