"""Unit tests of the emitter's asking half (workers.calls) at the bus seam:
the asks it publishes, the bound, the callback signatures, expiry. The
nodes' answers are handed to it as the reply channel would."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import socketio

from cluster.bus import with_timeout
from cluster.bus.services.asks import decode_args, encode_args
from tests.workers.test_emitter import URL, Wire
from workers import (
    CallTimeoutError,
    ConfigurationError,
    Emitter,
    NotConnectedError,
    PayloadError,
    PublishError,
    TooManyCallsError,
    WorkerError,
)
from workers.calls import WorkerCalls


@pytest.fixture
def emitter() -> Emitter:
    emitter = Emitter(URL, allow_unsigned=True, max_pending_calls=2)
    yield emitter
    emitter.close()


@pytest.fixture
def wire(emitter: Emitter) -> Wire:
    return Wire(emitter)


@pytest.fixture
def calls(emitter: Emitter, wire: Wire, monkeypatch: pytest.MonkeyPatch) -> WorkerCalls:
    calls = emitter._get_calls()
    # no reply channel: the test hands the answers over itself
    monkeypatch.setattr(calls.inbox, "start", lambda timeout: None)
    return calls


def reply(calls: WorkerCalls, ask_id: str, node: str, roster: list[str] | None = None,
          nodes: list[str] | None = None, **answers: Any) -> None:
    message: dict[str, Any] = {"method": "answer", "host_id": node,
                               "to": calls.manager.host_id, "ask_id": ask_id}
    if roster is not None:
        message.update(roster=roster, nodes=nodes or [node])
    if answers:
        message["answers"] = {sid: encode_args(list(args)) for sid, args in answers.items()}
    calls.asker.handle_answer(message)


def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_an_emit_with_a_callback_publishes_one_ask_on_the_common_channel(
        emitter: Emitter, wire: Wire, calls: WorkerCalls) -> None:
    emitter.emit("question", "why?", b"\x01", to="sid-a", namespace="/chat",
                 skip_sid="sid-b", callback=print)
    [message] = wire.messages()
    assert wire.channels == [None]  # every node must say whether it has the sid
    assert {k: v for k, v in message.items() if k not in ("ask_id", "args")} == {
        "method": "ask", "event": "question", "namespace": "/chat", "room": "sid-a",
        "skip_sid": "sid-b", "timeout": 60.0}
    assert decode_args(message["args"]) == ["why?", b"\x01"]


def test_callbacks_get_the_ack_args_from_the_sid_and_the_sid_first_from_a_room(
        emitter: Emitter, wire: Wire, calls: WorkerCalls) -> None:
    got: list[tuple[Any, ...]] = []
    emitter.emit("q", to="sid-a", callback=lambda *args: got.append(("sid", *args)))
    emitter.emit("q", to="team", callback=lambda *args: got.append(("room", *args)))
    to_sid, to_room = (m["ask_id"] for m in wire.messages())
    reply(calls, to_sid, "n1", roster=["sid-a"], **{"sid-a": ["yes", 1]})
    reply(calls, to_room, "n1", roster=["sid-a", "sid-b"], **{"sid-b": ["no"]})
    reply(calls, to_room, "n1", **{"sid-a": []})
    wait_for(lambda: len(got) == 3)
    assert got == [("sid", "yes", 1), ("room", "sid-b", "no"), ("room", "sid-a")]
    assert len(calls.asker) == 0  # all answered: nothing waits


def test_a_callback_s_own_timeout_and_its_hook(emitter: Emitter, wire: Wire,
                                               calls: WorkerCalls) -> None:
    silent: list[str] = []
    emitter.emit("q", to="team", callback=with_timeout(
        print, 0.05, on_timeout=lambda: silent.append("hook")))
    [message] = wire.messages()
    assert message["timeout"] == 0.05
    reply(calls, message["ask_id"], "n1", roster=["sid-a"])
    time.sleep(0.1)
    calls.asker.expire()  # the reply channel's tick
    wait_for(lambda: silent == ["hook"])
    assert len(calls.asker) == 0


def test_outstanding_asks_are_bounded_per_process(emitter: Emitter, wire: Wire,
                                                  calls: WorkerCalls) -> None:
    emitter.emit("q", to="a", callback=print)
    emitter.emit("q", to="b", callback=print)
    with pytest.raises(TooManyCallsError, match="max_pending_calls"):
        emitter.emit("q", to="c", callback=print)
    with pytest.raises(TooManyCallsError):  # calls and gathers count alike
        emitter.call("q", to="c", timeout=1)
    assert len(wire.messages()) == 2  # the refused asks were not published
    calls.asker.expire()
    assert len(calls.asker) == 2  # not due yet: 60 s


def test_call_returns_the_answer_like_socketio_call(emitter: Emitter, wire: Wire,
                                                    calls: WorkerCalls) -> None:
    def answer() -> None:
        wait_for(lambda: wire.raw)
        ask_id = wire.messages()[-1]["ask_id"]
        reply(calls, ask_id, "n1", roster=[], nodes=["n1", "n2"])
        reply(calls, ask_id, "n2", roster=["sid-a"], nodes=["n1", "n2"])
        reply(calls, ask_id, "n2", **{"sid-a": ["ok", 2]})
    threading.Thread(target=answer, daemon=True).start()
    assert emitter.call("confirm", {"job": 1}, to="sid-a", timeout=5) == ("ok", 2)
    assert len(calls.asker) == 0


def test_call_to_a_sid_connected_nowhere_fails_at_once(emitter: Emitter, wire: Wire,
                                                       calls: WorkerCalls) -> None:
    def nobody() -> None:
        wait_for(lambda: wire.raw)
        ask_id = wire.messages()[-1]["ask_id"]
        for node in ("n1", "n2"):
            reply(calls, ask_id, node, roster=[], nodes=["n1", "n2"])
    threading.Thread(target=nobody, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match="2 node"):
        emitter.call("confirm", to="gone", timeout=30)
    assert time.monotonic() - started < 5


def test_call_times_out_with_a_timeout_error_of_both_kinds(emitter: Emitter, wire: Wire,
                                                           calls: WorkerCalls) -> None:
    with pytest.raises(CallTimeoutError, match="no node replied") as raised:
        emitter.call("confirm", to="sid-a", timeout=0.1)
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, socketio.exceptions.TimeoutError)
    assert isinstance(raised.value, WorkerError)
    assert len(calls.asker) == 0  # an expired call leaves nothing behind


def test_closing_the_emitter_wakes_a_waiting_call(emitter: Emitter, wire: Wire,
                                                  calls: WorkerCalls) -> None:
    threading.Timer(0.1, emitter.close).start()
    with pytest.raises(PublishError, match="closed"):
        emitter.call("confirm", to="sid-a", timeout=30)


def test_gather_returns_answers_and_the_silent(emitter: Emitter, wire: Wire,
                                               calls: WorkerCalls) -> None:
    def answer() -> None:
        wait_for(lambda: wire.raw)
        ask_id = wire.messages()[-1]["ask_id"]
        reply(calls, ask_id, "n1", roster=["a", "b"], **{"a": ["A"]})
    threading.Thread(target=answer, daemon=True).start()
    result = emitter.gather("vote", to=["team", "guests"], timeout=0.3)
    assert result.answers == {"a": "A"} and result.missing == ["b"]
    assert wire.messages()[-1]["room"] == ["team", "guests"]


@pytest.mark.parametrize("call, error", [
    (lambda e: e.call("x", to=None), PayloadError),
    (lambda e: e.call("x", to=["a", "b"]), PayloadError),
    (lambda e: e.call("", to="a"), PayloadError),
    (lambda e: e.call("x", to="a", timeout=0), ConfigurationError),
    (lambda e: e.call("x", to="a", timeout=601), ConfigurationError),
    (lambda e: e.gather("x", to=None), PayloadError),
    (lambda e: e.gather("x", to="r", timeout=True), ConfigurationError),
    (lambda e: e.emit("x", to=None, callback=print), PayloadError),
    (lambda e: e.emit("x", to="a", callback="not callable"), PayloadError),
])
def test_mistakes_are_refused_before_anything_is_sent(emitter: Emitter, wire: Wire,
                                                      call: Any, error: type) -> None:
    with pytest.raises(error):
        call(emitter)
    assert wire.raw == []


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="max_pending_calls"):
        Emitter(URL, allow_unsigned=True, max_pending_calls=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        Emitter(URL, allow_unsigned=True, ack_timeout=-1)
