"""The asking side's bookkeeping (cluster.bus.services.asks), without a bus."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cluster.bus.services.asks import (
    MAX_ASK_SECONDS,
    Asker,
    GatherResult,
    answer_value,
    decode_args,
    encode_args,
)

ME = "asker-id"


def roster(ask_id: str, node: str, sids: list[str], nodes: list[str],
           **extra: Any) -> dict[str, Any]:
    return {"method": "answer", "host_id": node, "to": ME, "ask_id": ask_id,
            "roster": sids, "nodes": nodes, **extra}


def answers(ask_id: str, node: str, **by_sid: Any) -> dict[str, Any]:
    return {"method": "answer", "host_id": node, "to": ME, "ask_id": ask_id,
            "answers": {sid: encode_args(list(args)) for sid, args in by_sid.items()}}


def test_arguments_travel_as_json_with_binary_attachments_beside() -> None:
    args = ["text", {"blob": b"\x00\xff", "n": 1}, [b"x"]]
    entry = encode_args(args)
    assert all(isinstance(a, str) for a in entry[1:]) and len(entry) == 3
    assert decode_args(entry) == args
    assert encode_args([1, "a"]) == [[1, "a"]] and decode_args([[1, "a"]]) == [1, "a"]
    with pytest.raises(ValueError):
        decode_args([[{"_placeholder": True, "num": 0}], "not base64!"])


def test_answers_are_shaped_as_socketio_call_returns_them() -> None:
    assert answer_value([]) is None
    assert answer_value(["yes"]) == "yes"
    assert answer_value([1, 2]) == (1, 2)


def test_a_gather_ends_when_every_known_node_sent_its_roster_and_every_client_answered(
        ) -> None:
    asker = Asker(ME, threading.Event)
    pending = asker.open("team", 5)
    assert pending is not None
    asker.handle_answer(roster(pending.ask_id, "n1", ["a", "b"], ["n1", "n2"]))
    asker.handle_answer(answers(pending.ask_id, "n1", a=["yes"], b=["no", 2]))
    # node n1 knows n2: its roster is still awaited
    assert not pending.settled() and not pending.event.is_set()
    asker.handle_answer(roster(pending.ask_id, "n2", ["c"], ["n1", "n2", "n3"]))
    assert not pending.settled()  # and n2 knows a third node
    asker.handle_answer(roster(pending.ask_id, "n3", [], ["n1", "n2", "n3"]))
    asker.handle_answer(answers(pending.ask_id, "n2", c=[]))
    assert pending.event.is_set() and pending.wait()
    assert pending.result() == GatherResult({"a": "yes", "b": ("no", 2), "c": None}, [])
    assert pending.result().complete
    assert len(asker) == 0  # settled: forgotten at once


def test_answers_are_kept_only_from_the_node_that_rostered_the_client() -> None:
    asker = Asker(ME, threading.Event)
    pending = asker.open("team", 5)
    assert pending is not None
    asker.handle_answer(answers(pending.ask_id, "n1", a=["early"]))  # before its roster
    asker.handle_answer(roster(pending.ask_id, "n1", ["a", "b"], ["n1"]))
    asker.handle_answer(answers(pending.ask_id, "n2", a=["forged"]))  # not n2's client
    asker.handle_answer(dict(answers(pending.ask_id, "n1", b=["x"]), to="someone-else"))
    asker.handle_answer(answers(pending.ask_id, "n1", a=["first"]))
    asker.handle_answer(answers(pending.ask_id, "n1", a=["second"]))
    assert pending.answers == {"a": ["first"]} and pending.missing() == ["b"]
    assert not pending.settled()


def test_the_deadline_names_the_silent_and_nothing_stays_behind() -> None:
    asker = Asker(ME, threading.Event)
    silences: list[int] = []
    pending = asker.open("team", 0.05, on_silence=lambda: silences.append(1))
    assert pending is not None
    asker.handle_answer(roster(pending.ask_id, "n1", ["a", "b"], ["n1", "n2"]))
    asker.handle_answer(answers(pending.ask_id, "n1", a=[1]))
    started = time.monotonic()
    assert not pending.wait()  # n2 never replies (it died), b never answers
    assert 0.03 < time.monotonic() - started < 1.0
    assert pending.result() == GatherResult({"a": 1}, ["b"])
    asker.expire()
    assert len(asker) == 0 and silences == [1]
    asker.handle_answer(answers(pending.ask_id, "n1", b=[2]))  # too late: dropped
    assert pending.answers == {"a": [1]}


def test_a_sid_connected_nowhere_is_known_once_every_node_said_so() -> None:
    asker = Asker(ME, threading.Event)
    silences: list[int] = []
    pending = asker.open("sid-x", 60, first_answer=True, on_silence=lambda: silences.append(1))
    assert pending is not None
    asker.handle_answer(roster(pending.ask_id, "n1", [], ["n1", "n2"]))
    assert not pending.settled()
    asker.handle_answer(roster(pending.ask_id, "n2", [], ["n1", "n2"]))
    assert pending.settled() and pending.reached_nobody() and pending.event.is_set()
    assert silences == [1] and len(asker) == 0


def test_a_call_ends_at_the_first_answer() -> None:
    asker = Asker(ME, threading.Event)
    heard: list[tuple[str, list[Any]]] = []
    pending = asker.open("sid-x", 60, first_answer=True,
                         on_answer=lambda sid, args: heard.append((sid, args)))
    assert pending is not None
    asker.handle_answer(roster(pending.ask_id, "n2", ["sid-x"], ["n1", "n2"]))
    asker.handle_answer(answers(pending.ask_id, "n2", **{"sid-x": ["ok"]}))
    assert pending.settled() and not pending.heard_all  # n1's roster is not needed
    assert heard == [("sid-x", ["ok"])] and len(asker) == 0


def test_a_node_that_leaves_is_not_waited_for() -> None:
    asker = Asker(ME, threading.Event)
    pending = asker.open("team", 60)
    assert pending is not None
    asker.expect(pending, ["n1", "n2"])
    asker.handle_answer(roster(pending.ask_id, "n1", [], ["n1", "n2"]))
    assert not pending.settled()
    asker.node_gone("n2")
    assert pending.settled() and len(asker) == 0


def test_outstanding_asks_are_bounded() -> None:
    asker = Asker(ME, threading.Event, limit=2)
    first, second = asker.open("a", 5), asker.open("b", 5)
    assert first is not None and second is not None
    assert asker.open("c", 5) is None
    asker.close(first)
    assert asker.open("c", 5) is not None
    with pytest.raises(ValueError, match="positive"):
        Asker(ME, threading.Event, limit=0)


def test_the_ask_message_caps_the_timeout_and_carries_binary() -> None:
    asker = Asker(ME, threading.Event)
    pending = asker.open("room", 10_000)
    assert pending is not None
    message = asker.message(pending, "poll", ["q", b"\x01"], namespace="/chat",
                            skip_sid=["s"])
    assert message["timeout"] == MAX_ASK_SECONDS
    assert message["host_id"] == ME and message["room"] == "room"
    assert decode_args(message["args"]) == ["q", b"\x01"]


def test_cancel_wakes_every_waiter() -> None:
    asker = Asker(ME, threading.Event)
    pending = asker.open("room", 60)
    assert pending is not None
    threading.Timer(0.05, asker.cancel_all).start()
    started = time.monotonic()
    assert pending.wait() and pending.cancelled
    assert time.monotonic() - started < 5 and len(asker) == 0


GOOD_ASK = {"method": "ask", "host_id": "w", "ask_id": "1", "event": "q", "args": [["x"]],
            "namespace": "/", "room": "team", "skip_sid": None, "timeout": 5}
GOOD_ANSWER = {"method": "answer", "host_id": "n1", "to": "w", "ask_id": "1",
               "roster": ["a"], "nodes": ["n1"], "answers": {"a": [[1]]}}


def test_well_formed_asks_and_answers_pass_the_field_check() -> None:
    from cluster.bus.message_schema import check_fields

    check_fields(GOOD_ASK)
    check_fields(dict(GOOD_ASK, room=["a", 2], skip_sid=["s"], timeout=0.5))
    check_fields(GOOD_ANSWER)
    check_fields({"method": "answer", "host_id": "n1", "to": "w", "ask_id": "1",
                  "roster": [], "nodes": ["n1"], "error": "busy"})


@pytest.mark.parametrize("message", [
    dict(GOOD_ASK, room=None),                 # an ask names its clients
    dict(GOOD_ASK, room=[]),
    dict(GOOD_ASK, room=True),
    dict(GOOD_ASK, timeout=0),
    dict(GOOD_ASK, timeout=float("nan")),
    dict(GOOD_ASK, timeout="5"),
    dict(GOOD_ASK, args=["x"]),                # not [args, *attachments]
    dict(GOOD_ASK, args=[["x"], 1]),
    dict(GOOD_ASK, ask_id=1),
    dict(GOOD_ASK, skip_sid=[1]),
    {k: v for k, v in GOOD_ASK.items() if k != "host_id"},
    dict(GOOD_ANSWER, to=None),
    dict(GOOD_ANSWER, roster="a"),
    dict(GOOD_ANSWER, nodes=[1]),
    dict(GOOD_ANSWER, answers={"a": 1}),
    dict(GOOD_ANSWER, answers=[["a"]]),
    dict(GOOD_ANSWER, error=3),
])
def test_malformed_asks_and_answers_are_dropped_before_anything_acts(
        message: dict[str, Any]) -> None:
    from cluster.bus.errors import Dropped
    from cluster.bus.message_schema import check_fields

    with pytest.raises(Dropped) as dropped:
        check_fields(message)
    assert dropped.value.reason == "dropped_malformed"
