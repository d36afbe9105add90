"""The recovery stream on a real Redis: offsets, reads, trimming, signatures."""

from __future__ import annotations

import json

import pytest
import redis

from cluster.bus.codec import Codec
from cluster.bus.errors import Dropped
from cluster.recovery.offsets import InvalidOffset, Offset
from cluster.recovery.stream import RecoveryLog, split_published


def opener(codec: Codec):
    def open_entry(payload: bytes):
        try:
            return codec.open_archived(payload)[0]
        except Dropped:
            return None
    return open_entry

SECRET = "s" * 32


def _message(n: int) -> str:
    return json.dumps({"method": "emit", "event": "e", "data": [n], "namespace": "/",
                       "room": None, "skip_sid": None, "callback": None, "host_id": "h"})


def test_append_publishes_and_reads_back_in_order(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec(SECRET)
    log = RecoveryLog("chan", opener(codec), window=60)
    pubsub = client.pubsub()
    pubsub.subscribe("chan")
    pubsub.get_message(timeout=1)
    start = log.last_offset(client)
    assert start == "0-0"
    offsets = [log.append(client, codec.seal(_message(n), "h")) for n in range(5)]
    assert offsets == sorted(offsets, key=Offset.of)
    published = pubsub.get_message(timeout=1)
    offset, payload = split_published(published["data"])
    assert offset == offsets[0]
    assert Codec(SECRET).open(payload)[0]["data"] == [0]
    after = log.after(client, offsets[1])
    assert [entry for entry, _ in after] == offsets[2:]
    assert [message["data"] for _, message in after] == [[2], [3], [4]]
    assert log.after(client, start) is not None and len(log.after(client, start)) == 5
    assert log.last_offset(client) == offsets[-1]
    # every key it writes expires
    assert client.pttl(log.key) > 0


def test_untrustworthy_offsets_are_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec()
    log = RecoveryLog("chan2", opener(codec), window=60, max_entries=10)
    offsets = [log.append(client, codec.seal(_message(n), "h")) for n in range(3)]
    assert log.after(client, "not-an-offset") is None
    assert log.after(client, "1-0") is None  # older than anything kept
    assert log.after(client, offsets[0]) is not None


def test_entries_failing_the_signature_are_skipped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec(SECRET)
    log = RecoveryLog("chan3", opener(codec), window=60)
    first = log.append(client, codec.seal(_message(1), "h"))
    forged = Codec("x" * 32).seal(_message(666), "h")
    client.xadd(log.key, {"p": forged})
    client.xadd(log.key, {"p": b"\x80\x04pickle"})
    log.append(client, codec.seal(_message(2), "h"))
    after = log.after(client, first)
    assert [message["data"] for _, message in after] == [[2]]


def test_messages_without_an_offset_pass_through_untouched() -> None:
    assert split_published(b'{"method":"emit"}') == (None, b'{"method":"emit"}')
    assert split_published(b"@bogus@{}") == (None, b"@bogus@{}")
    assert split_published(b"@12-3@{}") == ("12-3", b"{}")
    # only what Redis writes is taken for an offset
    for prefix in (b"@-12-3@{}", b"@012-3@{}", b"@12-3 @{}", b"@%d-0@{}" % (2 ** 64)):
        assert split_published(prefix) == (None, prefix)


def test_readable_checks_only_the_oldest_entry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = RecoveryLog("chan4", opener(Codec()), window=60)
    first = log.append(client, Codec().seal(_message(1), "h"))
    assert log.readable(client, first) and log.readable(client, "0-0")
    assert not log.readable(client, "1-0") and not log.readable(client, None)
    assert not log.readable(client, "nope")


def test_offset_facts_say_in_one_read_whether_an_offset_is_kept_and_readable(
        redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec()
    log = RecoveryLog("chan7", opener(codec), window=60)
    offsets = [log.append(client, codec.seal(_message(i), "h")) for i in range(4)]
    client.xtrim(log.key, maxlen=2, approximate=False)  # the first two are trimmed
    probes = [*offsets, "0-0", "1-0", "99999999999999-0", "x", None]
    kept = set(offsets[2:])
    for offset in probes:
        assert log.offset_facts(client, offset) == (
            offset in kept, log.readable(client, offset)), offset
    assert log.offset_facts(client, offsets[3]) == (True, True)
    assert log.offset_facts(client, offsets[0]) == (False, False)


def test_reads_refuse_what_is_not_an_offset(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec()
    log = RecoveryLog("chan5", opener(codec), window=60)
    first = log.append(client, codec.seal(_message(1), "h"))
    assert log.offset_facts(client, first).contains
    assert not log.offset_facts(client, "1-0").contains
    assert not log.offset_facts(client, "x").contains
    with pytest.raises(InvalidOffset):
        log.page(client, "-1-0", 10)
    assert [entry for entry, _, _ in log.page(client, "0-0", 10)] == [first]


def test_the_restart_point_is_the_head_or_a_mark_on_an_empty_stream(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    codec = Codec()
    log = RecoveryLog("chan6", opener(codec), window=60)
    mark = log.restart_point(client, b"mark")
    assert Offset.parse(mark) is not None
    assert log.last_offset(client) == mark and log.offset_facts(client, mark).contains
    head = log.append(client, codec.seal(_message(1), "h"))
    assert log.restart_point(client, b"mark") == head
    assert Offset.of(head) > Offset.of(mark)
