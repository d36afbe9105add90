"""The frame writer's write window: frames to a socket streamed to wait for
the next ones, never longer than the window, and an answer never waits."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster import runtime
from cluster.exceptions import ConfigurationError
from cluster.node import frame_writer
from cluster.node.frame_writer import (
    MAX_WRITE_WINDOW,
    Flusher,
    FrameWriter,
    checked_write_window,
)
from cluster.node.frames import frame

WINDOW = 0.002


class Clock:
    """The writer's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class HandRuntime:
    """What the flusher asks of a runtime, run by hand: the end-of-turn
    callbacks and the timers (with their delays) are kept until run."""

    def __init__(self) -> None:
        self.turn_end: list[Callable[[], Any]] = []
        self.timers: list[tuple[float, Callable[[], Any]]] = []

    def call_soon(self, callback: Callable[[], Any]) -> None:
        self.turn_end.append(callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> object:
        self.timers.append((delay, callback))
        return object()

    def raw_socket(self, sock: Any) -> Any:
        return sock

    def end_turn(self) -> None:
        callbacks, self.turn_end = self.turn_end, []
        for callback in callbacks:
            callback()

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _, callback in timers:
            callback()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    hand = Clock()
    monkeypatch.setattr(frame_writer.time, "monotonic", hand)
    return hand


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    yield left, right
    left.close()
    right.close()


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def _streamed_writer(clock: Clock, left: socket.socket, right: socket.socket
                     ) -> tuple[HandRuntime, Flusher, FrameWriter]:
    """A writer whose first frame went out at ``clock.now``, its client silent."""
    hand = HandRuntime()
    flusher = Flusher(hand, WINDOW)  # type: ignore[arg-type]
    writer = FrameWriter(left, flusher)
    writer.write(frame(b"first"))
    assert hand.timers == [] and len(hand.turn_end) == 1  # a new socket: at once
    hand.end_turn()
    assert _received(right) == frame(b"first")
    return hand, flusher, writer


def test_frames_to_a_socket_just_written_wait_for_the_window_and_leave_together(
        clock: Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    hand, flusher, writer = _streamed_writer(clock, left, right)
    clock.now += WINDOW / 4
    writer.write(frame(b"a"))
    hand.end_turn()
    clock.now += WINDOW / 4
    writer.write(frame(b"b"))
    hand.end_turn()
    assert _received(right) == b""  # held, not sent at the turns' ends
    # one timer, due a window after the last send: never later
    assert len(hand.timers) == 1 and hand.timers[0][0] == pytest.approx(WINDOW * 3 / 4)
    hand.fire_timers()
    assert _received(right) == frame(b"a") + frame(b"b")  # one send
    assert flusher.counters == {"writes": 2, "frames": 3, "held": 1}


def test_a_socket_quiet_for_a_window_is_written_at_the_end_of_the_turn(
        clock: Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    hand, _, writer = _streamed_writer(clock, left, right)
    clock.now += WINDOW * 1.5
    writer.write(frame(b"later"))
    assert hand.timers == []
    hand.end_turn()
    assert _received(right) == frame(b"later")


def test_what_answers_a_client_that_spoke_never_waits(
        clock: Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    hand, _, writer = _streamed_writer(clock, left, right)
    clock.now += WINDOW / 10
    writer.heard()  # the client sent an event
    writer.write(frame(b"ack"))
    assert hand.timers == []
    hand.end_turn()
    assert _received(right) == frame(b"ack")
    # a frame held before the client spoke leaves with the answer
    clock.now += WINDOW / 10
    writer.write(frame(b"broadcast"))
    assert len(hand.timers) == 1
    writer.heard()
    writer.write(frame(b"ack2"))
    hand.end_turn()
    assert _received(right) == frame(b"broadcast") + frame(b"ack2")
    hand.fire_timers()  # the hold's timer finds nothing left to send
    assert _received(right) == b""


def test_one_timer_writes_every_socket_held_and_none_waits_past_its_window(
        clock: Clock) -> None:
    hand = HandRuntime()
    flusher = Flusher(hand, WINDOW)  # type: ignore[arg-type]
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        writers = []
        for left, _ in pairs:
            left.setblocking(False)
            writers.append(FrameWriter(left, flusher))
        for writer in writers:  # each socket's first frame, sent a little apart
            writer.write(frame(b"0"))
            hand.end_turn()
            clock.now += WINDOW / 8
        held_at = []
        for index, writer in enumerate(writers):
            held_at.append(clock.now)
            writer.write(frame(b"%d" % index))
            clock.now += WINDOW / 8
        assert len(hand.timers) == 1  # armed by the first writer held
        due = held_at[0] + hand.timers[0][0]
        assert all(due <= at + WINDOW for at in held_at)
        hand.fire_timers()
        for index, (_, right) in enumerate(pairs):
            right.setblocking(False)
            assert _received(right) == frame(b"0") + frame(b"%d" % index)
    finally:
        for left, right in pairs:
            left.close()
            right.close()


def test_a_closed_or_overfull_writer_is_not_held(
        clock: Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    hand, _, writer = _streamed_writer(clock, left, right)
    writer.write(frame(b"x" * (frame_writer.FLUSH_AT_BYTES + 10)))  # past the flush mark
    assert hand.timers == []
    received = b""
    while chunk := _received(right):
        received += chunk
    assert received.endswith(b"x" * 100)
    writer.write(frame(b"held"))
    assert len(hand.timers) == 1
    writer.close(flush=False)
    hand.fire_timers()  # nothing is written once closed
    assert _received(right) == b""


def test_without_a_window_every_frame_leaves_at_the_end_of_its_turn(
        clock: Clock, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    hand = HandRuntime()
    writer = FrameWriter(left, Flusher(hand))  # type: ignore[arg-type]
    for name in (b"a", b"b"):
        writer.write(frame(name))
        hand.end_turn()
        assert _received(right) == frame(name)
    assert hand.timers == []


def test_the_window_on_the_real_hub_holds_then_sends_both_frames_in_one_write(
        pair: tuple[socket.socket, socket.socket]) -> None:
    import eventlet

    left, right = pair
    flusher = Flusher(runtime.load("eventlet"), 0.05)
    writer = FrameWriter(left, flusher)
    writer.write(frame(b"first"))
    eventlet.sleep(0)  # the end of the turn
    assert _received(right) == frame(b"first")
    writer.write(frame(b"second"))
    writer.write(frame(b"third"))
    eventlet.sleep(0)
    assert _received(right) == b""  # held for the window
    deadline = eventlet.hubs.get_hub().clock() + 5
    while flusher.counters["writes"] < 2 and eventlet.hubs.get_hub().clock() < deadline:
        eventlet.sleep(0.01)
    assert flusher.counters == {"writes": 2, "frames": 3, "held": 1}
    assert _received(right) == frame(b"second") + frame(b"third")


@pytest.mark.parametrize("value", [-0.001, MAX_WRITE_WINDOW * 2, True, "0.002", None])
def test_a_write_window_out_of_bounds_is_refused_with_the_fix(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="write_window must be a number of seconds"):
        checked_write_window(value)


def test_a_write_window_in_bounds_is_taken_in_seconds() -> None:
    assert checked_write_window(0) == 0.0
    assert checked_write_window(0.002) == 0.002
    assert checked_write_window(MAX_WRITE_WINDOW) == MAX_WRITE_WINDOW
