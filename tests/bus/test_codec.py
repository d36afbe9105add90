"""Wire format: JSON only, signatures, replays, field checks."""
from __future__ import annotations

import json
import pickle
import time

import pytest

from cluster.bus.codec import Codec
from cluster.bus.errors import BusConfigurationError, BusSerializationError, Dropped

SECRET = "s" * 32
EMIT = {"method": "emit", "event": "chat", "data": ["hi"], "binary": False,
        "namespace": "/", "room": "lobby", "skip_sid": None, "callback": None,
        "host_id": "h1"}


def reason(codec: Codec, raw: object) -> str:
    with pytest.raises(Dropped) as info:
        codec.open(raw)
    return info.value.reason


def test_unsigned_round_trip_is_the_stock_format() -> None:
    codec = Codec()
    wire = codec.seal(codec.dumps(EMIT), "h1")
    outer = json.loads(wire)
    # python-socketio's fields, plus ts and the sender first (its header)
    assert wire.startswith(b'{"src":"h1",') and outer["src"] == "h1"
    assert {k: v for k, v in outer.items() if k not in ("ts", "src")} == EMIT
    message, _ = Codec().open(wire)
    assert {k: v for k, v in message.items() if k != "ts"} == EMIT  # as python-socketio's
    message, ts = codec.open(wire)
    assert message["event"] == "chat" and abs(ts - time.time() * 1000) < 5000


def test_stock_python_socketio_message_is_accepted_without_secret() -> None:
    # exactly what socketio.RedisManager(write_only=True).emit() publishes
    stock = json.dumps(dict(EMIT, host_id="f" * 32)).encode()
    message, ts = Codec().open(stock)
    assert message["room"] == "lobby" and ts is None


def test_signed_round_trip_and_envelope() -> None:
    sender, receiver = Codec(SECRET), Codec(SECRET)
    wire = sender.seal(sender.dumps(EMIT), "h1")
    outer = json.loads(wire)
    assert set(outer) == {"v", "src", "seq", "ts", "log", "sig", "body"}
    message, _ = receiver.open(wire)
    assert message == EMIT


def test_unsigned_message_dropped_when_secret_configured() -> None:
    assert reason(Codec(SECRET), json.dumps(EMIT)) == "dropped_unsigned"


def test_wrong_secret_or_tampered_body_dropped() -> None:
    wire = Codec("x" * 32).seal(json.dumps(EMIT), "h1")
    assert reason(Codec(SECRET), wire) == "dropped_bad_signature"
    outer = json.loads(Codec(SECRET).seal(json.dumps(EMIT), "h1"))
    outer["body"] = outer["body"].replace("hi", "pwned")
    assert reason(Codec(SECRET), json.dumps(outer)) == "dropped_bad_signature"


def test_replayed_and_stale_messages_dropped() -> None:
    sender, receiver = Codec(SECRET), Codec(SECRET, max_age=60)
    wire = sender.seal(json.dumps(EMIT), "h1")
    receiver.open(wire)
    assert reason(receiver, wire) == "dropped_replayed"
    old = json.loads(sender.seal(json.dumps(EMIT), "h2"))
    old["ts"] -= 120_000
    old["sig"] = sender._sign(old["src"], old["seq"], old["ts"], 0, old["body"])
    assert reason(receiver, json.dumps(old)) == "dropped_replayed"


def test_pickle_and_garbage_are_malformed_and_never_unpickled() -> None:
    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (pytest.fail, ("unpickled!",))

    for codec in (Codec(), Codec(SECRET)):
        assert reason(codec, pickle.dumps(Boom())) == "dropped_malformed"
        assert reason(codec, pickle.dumps(EMIT)) == "dropped_malformed"
        assert reason(codec, b"\xff\xfe not utf8") == "dropped_malformed"
    assert reason(Codec(), b"[1, 2]") == "dropped_malformed"
    assert reason(Codec(), b'"just a string"') == "dropped_malformed"


@pytest.mark.parametrize("patch", [
    {"method": "exec"}, {"event": 3}, {"data": "x"}, {"room": {"a": 1}},
    {"skip_sid": 5}, {"callback": ["sid", "/"]}, {"namespace": 1},
    {"binary": True, "data": [[], 5]},
])
def test_field_checks(patch: dict) -> None:
    assert reason(Codec(), json.dumps(dict(EMIT, **patch))) == "dropped_malformed"


def test_unserializable_payload_raises_at_caller() -> None:
    with pytest.raises(BusSerializationError, match="not JSON serializable"):
        Codec().dumps(dict(EMIT, data=[object()]))
    with pytest.raises(TypeError):  # also a TypeError, as json would raise
        Codec(SECRET).dumps(dict(EMIT, data=[{1, 2}]))


def test_short_secret_rejected_with_a_fix() -> None:
    with pytest.raises(BusConfigurationError, match="token_hex"):
        Codec("short")


def test_public_api_is_complete_and_importable() -> None:
    import cluster.bus as bus
    for name in bus.__all__:
        assert getattr(bus, name) is not None
    public = {n for n, v in vars(bus).items()
              if not n.startswith("_") and isinstance(v, type)
              and v.__module__.startswith("cluster.bus")}
    assert public <= set(bus.__all__)


def test_bad_driver_option_fails_at_creation() -> None:
    from cluster.bus import create_manager
    with pytest.raises(BusConfigurationError, match="redis.Redis"):
        create_manager("redis://127.0.0.1:1/0", options={"no_such_option": 1})
    with pytest.raises(BusConfigurationError, match="Invalid message queue URL"):
        create_manager("localhost:6379")


def test_a_message_sealed_before_the_receiver_started_is_a_replay() -> None:
    # a restarted node has no memory of the sequence numbers it saw: what
    # was sealed before it started (less the clock skew) may be a replay
    sender = Codec(SECRET)
    captured = sender.seal(json.dumps(EMIT), "h1")
    outer = json.loads(captured)
    restarted = Codec(SECRET, max_clock_skew=2)
    restarted.not_before_ms = outer["ts"] + 1  # started after the capture
    with pytest.raises(Dropped, match="before this node started") as info:
        restarted.open(captured)
    assert info.value.reason == "dropped_replayed"
    fresh = sender.seal(json.dumps(EMIT), "h1")
    restarted.not_before_ms = outer["ts"] - 1
    assert restarted.open(fresh)[0] == EMIT  # sealed after the start: accepted


def test_offsets_need_a_message_signed_as_logged_and_its_publish_time() -> None:
    sender, receiver = Codec(SECRET), Codec(SECRET)
    logged = sender.seal(json.dumps(EMIT), "h1", logged=True)
    ts = json.loads(logged)["ts"]

    def dropped(wire: bytes, offset: str | None) -> str:
        with pytest.raises(Dropped) as info:
            receiver.open(wire, offset=offset)
        return info.value.reason

    # the replay: an offset far in the future
    assert dropped(logged, "99999999999999-0") == "dropped_bad_offset"
    assert dropped(logged, f"{ts - 10_000}-0") == "dropped_bad_offset"
    assert dropped(logged, None) == "dropped_bad_offset"  # offset stripped
    plain = sender.seal(json.dumps(EMIT), "h1")
    assert dropped(plain, f"{ts}-0") == "dropped_bad_offset"  # offset added
    # the "log" flag is signed: flipping it breaks the signature
    outer = json.loads(plain)
    outer["log"] = 1
    assert dropped(json.dumps(outer).encode(), f"{ts}-0") == "dropped_bad_signature"
    assert receiver.open(logged, offset=f"{ts + 3}-0")[0] == EMIT
    assert receiver.open(plain)[0] == EMIT


def test_lanes_keep_their_own_sequence_and_their_number_is_signed() -> None:
    sender, receiver = Codec(SECRET), Codec(SECRET)
    first = sender.seal(json.dumps(EMIT), "h1", lane=2)
    second = sender.seal(json.dumps(EMIT), "h1", lane=3)
    common = sender.seal(json.dumps(EMIT), "h1")
    assert json.loads(first)["ln"] == 2 and "ln" not in json.loads(common)
    # lanes are read over different connections: a later seal of another
    # lane may arrive first, and the earlier one is still taken
    receiver.open(common)
    receiver.open(second)
    receiver.open(first)
    # within a lane a number at or below the last one is a replay
    assert reason(receiver, first) == "dropped_replayed"
    # moving a message to another lane breaks its signature
    moved = json.loads(sender.seal(json.dumps(EMIT), "h1", lane=2))
    moved["ln"] = 4
    assert reason(receiver, json.dumps(moved)) == "dropped_bad_signature"
    dropped = json.loads(sender.seal(json.dumps(EMIT), "h1", lane=2))
    del dropped["ln"]
    assert reason(receiver, json.dumps(dropped)) == "dropped_bad_signature"
    for bad in (-1, True, "2", 1.5):
        malformed = json.loads(sender.seal(json.dumps(EMIT), "h1", lane=2))
        malformed["ln"] = bad
        assert reason(receiver, json.dumps(malformed)) == "dropped_malformed"


def test_many_live_senders_and_lanes_are_not_scanned_on_every_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.bus import codec as codec_module
    monkeypatch.setattr(codec_module, "SEQ_MEMORY", 64)
    sender, receiver = Codec(SECRET), Codec(SECRET)
    scans = []
    real = receiver._forget_old_sources
    monkeypatch.setattr(receiver, "_forget_old_sources",
                        lambda now: (scans.append(now), real(now)))
    # 200 live (sender, lane) pairs, none silent: each message still passes
    for _ in range(3):
        for src in range(50):
            for lane in range(4):
                receiver.open(sender.seal(json.dumps(EMIT), f"h{src}", lane=lane))
    # the memory doubles past what stays instead of being scanned each time
    assert len(scans) <= 3
