"""Routing fields of recovery stream entries, and the per-client bounds of a
replay read through them (pure Python: the scan is faked page by page)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.bus.codec import Codec
from cluster.recovery.replay import SCAN_FACTOR, read_replay
from cluster.recovery.routing import ScanPage, route_fields, scan_members


def _emit(room: Any = None, skip: Any = None, namespace: Any = "/", **extra: Any) -> str:
    return json.dumps({"method": "emit", "event": "e", "data": [1], "namespace": namespace,
                       "room": room, "skip_sid": skip, "callback": None, "host_id": "h",
                       **extra})


def _fields(payload: str | bytes) -> dict[str, str]:
    flat = route_fields(payload)
    return dict(zip(flat[::2], flat[1::2], strict=True))


@pytest.mark.parametrize("sealed", [False, True])
def test_fields_state_namespace_targets_and_skips(sealed: bool) -> None:
    codec = Codec("s" * 32)

    def payload(body: str) -> Any:
        return codec.seal(body, "h", logged=True) if sealed else body.encode()

    assert _fields(payload(_emit())) == {"ns": "/", "to": "*"}
    assert _fields(payload(_emit("lobby", namespace="/chat"))) == {"ns": "/chat", "to": "=lobby"}
    assert _fields(payload(_emit(["a", "b"], skip="s1"))) == {
        "ns": "/", "to": "=a\0b", "sk": "=s1"}
    assert _fields(payload(_emit("a", skip=["s1", "s2"])))["sk"] == "=s1\0s2"
    assert _fields(payload(_emit(namespace=None))) == {"ns": "/", "to": "*"}


@pytest.mark.parametrize("payload", [
    _emit(5),                      # a room that is not a string
    _emit(["a", 5]),
    _emit([]),
    _emit("a\0b"),                 # a name the separator would split
    _emit(namespace=7),
    json.dumps({"method": "heartbeat", "host_id": "h"}),  # not an emit
    "not json", "[1, 2]", "{\"sig\": 1, \"body\": \"nope\"}",
])
def test_no_fields_where_they_cannot_be_exact(payload: str) -> None:
    # no fields: every replay examines the entry in full, so nothing is hidden
    assert route_fields(payload) == []


def test_a_skip_it_cannot_state_is_left_to_the_full_match() -> None:
    assert _fields(_emit("a", skip=["s1", 3])) == {"ns": "/", "to": "=a"}


def test_scan_members_are_its_string_rooms_without_its_sid() -> None:
    assert scan_members("sid1", {"b", "sid1", "a", 4}) == ["a", "b"]


def _message(room: Any, n: int) -> dict[str, Any]:
    return {"method": "emit", "event": "e", "data": [n], "namespace": "/", "room": room,
            "skip_sid": None}


class FakeStream:
    """A scan reader over a list of (offset, message) already filtered
    (``returned``) among ``between`` entries scanned per returned one."""

    def __init__(self, returned: list[tuple[str, dict[str, Any] | None]], between: int,
                 per_call: int = 3, length: int = 1_000_000) -> None:
        self.returned, self.between = returned, between
        self.per_call, self.length = per_call, length
        self.calls: list[str] = []

    def __call__(self, cursor: str) -> ScanPage:
        self.calls.append(cursor)
        after = [entry for entry in self.returned if int(entry[0].split("-")[0]) >
                 int(cursor.split("-")[0])]
        page = after[:self.per_call]
        done = len(after) <= self.per_call
        last = page[-1][0] if page else cursor
        return ScanPage([(offset, message, 10) for offset, message in page], last,
                        len(page) * (1 + self.between), self.length, done)


def test_a_replay_is_bounded_by_its_own_packets_not_by_what_was_scanned() -> None:
    mine = [(f"{n}-0", _message("mine", n)) for n in range(1, 8)]
    # 100,000 entries of others scanned in Redis for each of ours
    stream = FakeStream(mine, between=100_000)
    replay = read_replay(stream, "0-0", "sid1", "/", {"mine"}, max_packets=10,
                         max_bytes=10_000)
    assert replay.refused is None
    assert [message["data"] for _, message in replay.packets] == [[n] for n in range(1, 8)]
    assert replay.scanned == 7 * 100_001 and replay.checked == 7
    assert replay.covered == "7-0"
    assert "7 packet(s) of 700007 entries scanned, 7 checked" == replay.describe()
    assert stream.calls == ["0-0", "3-0", "6-0"]


def test_past_its_own_bounds_the_replay_is_refused_whole() -> None:
    mine = [(f"{n}-0", _message("mine", n)) for n in range(1, 8)]
    refused = read_replay(FakeStream(mine, 0), "0-0", "sid1", "/", {"mine"},
                          max_packets=6, max_bytes=10_000)
    assert refused.over_limit and refused.packets == []
    assert "max_replay_packets=6" in (refused.refused or "")
    refused = read_replay(FakeStream(mine, 0), "0-0", "sid1", "/", {"mine"},
                          max_packets=10, max_bytes=35)
    assert "max_replay_bytes=35" in (refused.refused or "")


def test_returned_entries_that_do_not_reach_it_are_bounded() -> None:
    # entries without routing fields (an older node), or with lying ones
    others = [(f"{n}-0", _message("other", n)) for n in range(1, 40)]
    others[5] = ("6-0", None)  # a bad signature: never trusted, counted too
    replay = read_replay(FakeStream(others, 0), "0-0", "sid1", "/", {"mine"},
                         max_packets=3, max_bytes=10_000)
    assert replay.over_limit and f"more than {SCAN_FACTOR * 3}" in (replay.refused or "")


def test_a_stream_growing_faster_than_it_is_read_ends_the_replay() -> None:
    mine = [(f"{n}-0", _message("mine", n)) for n in range(1, 100)]
    replay = read_replay(FakeStream(mine, 10, per_call=1, length=50), "0-0", "sid1", "/",
                         {"mine"}, max_packets=1000, max_bytes=10**6)
    assert replay.over_limit and "grew faster" in (replay.refused or "")


def test_an_unreadable_stream_is_not_an_over_limit_refusal() -> None:
    replay = read_replay(lambda cursor: None, "0-0", "sid1", "/", set(), max_packets=3,
                         max_bytes=100)
    assert replay.refused == "the recovery log is unreadable" and not replay.over_limit
