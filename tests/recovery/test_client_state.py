"""A python client's resume bookkeeping (cluster.recovery.client_state) and a
session's recovery history (cluster.recovery.history)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.recovery import history
from cluster.recovery.client_state import ResumeState, has_offset_marker


def test_offset_markers_are_an_offset_or_none_after_the_arguments() -> None:
    assert has_offset_marker(["event", "data", "1700000000000-1"])
    assert has_offset_marker(["event", "data", None])
    assert not has_offset_marker(["event", "data", "01-1"])  # not what Redis writes
    assert not has_offset_marker(["event", "hello"])
    assert not has_offset_marker(["event"])
    assert not has_offset_marker("event")


def test_the_first_connect_sends_auth_alone_then_pid_and_offset() -> None:
    state = ResumeState()
    assert state.connect_payload("/", {"token": "t"}) == {"token": "t"}
    state.connected("/", {"sid": "s1", "pid": "p1", "offsets": True})
    assert state.received("/", None, ["news", "a", "5-0"]) == ["news", "a"]
    assert state.connect_payload("/", {"token": "t"}) == {"pid": "p1", "offset": "5-0",
                                                          "token": "t"}
    # the application's own keys win, as in socket.io-client
    assert state.connect_payload("/", {"pid": "mine"})["pid"] == "mine"
    # a callable's non-dict auth is left alone
    assert state.connect_payload("/", "opaque") == "opaque"


def test_only_a_newer_offset_is_kept_and_acked_events_keep_their_arguments() -> None:
    state = ResumeState()
    state.connected("/", {"sid": "s1", "pid": "p1", "offsets": True})
    state.received("/", None, ["e", "9-10"])
    state.received("/", None, ["e", "9-9"])  # older (replayed twice): ignored
    assert state.offsets["/"] == "9-10"
    assert state.received("/", None, ["e", None]) == ["e"]  # delivered without one
    assert state.offsets["/"] == "9-10"
    assert state.received("/", 7, ["e", "10-0"]) == ["e", "10-0"]  # an ack request
    assert state.offsets["/"] == "9-10"


def test_without_offsets_announced_nothing_is_stripped() -> None:
    state = ResumeState()
    state.connected("/", {"sid": "s1", "pid": "p1"})
    assert state.received("/", None, ["e", "1-0"]) == ["e", "1-0"]
    assert "/" not in state.offsets


def test_recovered_only_when_the_same_sid_comes_back() -> None:
    state = ResumeState()
    state.connected("/", {"sid": "s1", "pid": "p1", "offsets": True})
    state.received("/", None, ["e", "3-0"])
    assert state.recovered is False
    state.connected("/", {"sid": "s1", "pid": "p2", "offsets": True})
    assert state.recovered is True
    assert state.pids["/"] == "p2"
    assert state.offsets["/"] == "3-0"  # recovered: keeps counting
    state.connected("/", {"sid": "s2", "pid": "p3", "offsets": True})
    assert state.recovered is False
    assert "/" not in state.offsets  # a fresh connection starts again


def test_a_reply_without_pid_forgets_it_and_bad_data_is_an_empty_reply() -> None:
    state = ResumeState()
    state.connected("/chat", {"sid": "s1", "pid": "p1"})
    assert state.connected("/chat", None) == {}
    assert "/chat" not in state.pids
    assert state.connect_payload("/chat", {}) == {}


@dataclass
class Bound:
    offset: str | None = None
    base_offsets: dict[str, str] = field(default_factory=dict)
    rebased: dict[str, str] = field(default_factory=dict)


def test_a_fresh_start_records_the_stream_head_or_forgets_the_start() -> None:
    bound = Bound(rebased={"/": "1-0"})
    history.start_fresh(bound, "/", "7-0")
    assert bound.base_offsets == {"/": "7-0"} and bound.rebased == {}
    history.start_fresh(bound, "/", None)  # Redis down: no recovery from here
    assert bound.base_offsets == {}


def test_a_restart_moves_the_start_of_every_namespace() -> None:
    bound = Bound(base_offsets={"/": "1-0", "/a": "2-0"})
    history.restart(bound, ["/", "/a"], "9-0")
    assert bound.base_offsets == {"/": "9-0", "/a": "9-0"}
    assert bound.rebased == {"/": "9-0", "/a": "9-0"}
    history.restart(bound, ["/a"], None)
    assert bound.base_offsets == {"/": "9-0"} and bound.rebased == {"/": "9-0"}


def test_the_replay_starts_at_the_clients_offset_else_the_sessions_start() -> None:
    bound = Bound(base_offsets={"/": "4-0"}, rebased={"/": "4-0"})
    assert history.replay_offset(bound, "/") == "4-0"
    bound.offset = "5-1"
    assert history.replay_offset(bound, "/") == "5-1"
    assert history.session_start(bound, "/") == "4-0"
    assert history.restart_point(bound, "/") == "4-0"
    assert history.replay_offset(None, "/") is None
    assert history.client_offset({"offset": "5-1"}) == "5-1"
    assert history.client_offset({"offset": 5}) is None
    assert history.client_offset(None) is None
