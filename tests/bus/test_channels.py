"""cluster.bus.channels: room emits travel only to the nodes with members."""
from __future__ import annotations

import threading
from typing import Any

import socketio

from cluster.bus.channels import ChannelFollower, node_channel, room_channel, single_room
from tests.harness.peers import Peer
from tests.harness.raw_websocket import metric


def test_channel_names_are_bounded_and_distinct() -> None:
    one = room_channel("flask-socketio", "/", "x" * 10_000)
    assert one.startswith("flask-socketio:room:") and len(one) == len("flask-socketio:room:") + 16
    assert room_channel("c", "/", "r") != room_channel("c", "/chat", "r")
    assert room_channel("c", "/", 1) != room_channel("c", "/", "1")
    assert node_channel("c", "abc") == "c:node:abc"
    assert single_room("r") and single_room(7)
    assert not single_room(None) and not single_room(["a", "b"])


class _PubSub:
    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[str, ...]]] = []

    def subscribe(self, *channels: str) -> None:
        self.commands.append(("subscribe", channels))

    def unsubscribe(self, *channels: str) -> None:
        self.commands.append(("unsubscribe", channels))


class _Tasks:
    """A spawn that runs its tasks when the test says (the end of a turn)."""

    def __init__(self) -> None:
        self.due: list[Any] = []

    def __call__(self, task: Any, *args: Any) -> None:
        self.due.append((task, args))

    def run(self) -> None:
        due, self.due = self.due, []
        for task, args in due:
            task(*args)


def test_follows_and_unfollows_of_one_turn_go_out_as_one_batch_later() -> None:
    tasks = _Tasks()
    follower = ChannelFollower(tasks, threading.Event)
    pubsub = follower.pubsub = _PubSub()
    follower.follow("r0")
    follower.follow("r1")
    follower.follow("gone")
    follower.unfollow("gone")
    assert pubsub.commands == []  # nothing sent while the caller's turn runs
    tasks.run()
    assert pubsub.commands == [("unsubscribe", ("gone",)), ("subscribe", ("r0", "r1"))]
    assert follower.followed() == ["r0", "r1"]


def test_a_join_waits_for_the_confirmation_and_an_unfollow_is_sent() -> None:
    follower = ChannelFollower(lambda task: task(), threading.Event)
    pubsub = follower.pubsub = _PubSub()
    threading.Timer(0.05, follower.confirmed, args=("r",)).start()
    assert follower.follow("r", wait=5)
    assert follower.follow("r", wait=5)  # followed already: no second command
    follower.unfollow("r")
    assert pubsub.commands == [("subscribe", ("r",)), ("unsubscribe", ("r",))]
    assert not follower.wanted("r") and len(follower) == 0


def test_without_a_subscription_the_next_one_takes_every_followed_channel() -> None:
    follower = ChannelFollower(lambda task: task(), threading.Event)
    assert not follower.follow("r", wait=0.05)  # nobody confirms while the bus is down
    assert follower.followed() == ["r"]


def _received(node: Any) -> float:
    return metric(node, "socketio_bus", kind="received")


def test_a_node_without_members_of_a_room_receives_none_of_its_emits(
        node_factory: Any, sio_client_factory: Any) -> None:
    busy, idle = node_factory(count=2)
    sender = Peer(sio_client_factory, busy.url, cls=socketio.Client)
    member = Peer(sio_client_factory, busy.url, cls=socketio.Client)
    bystander = Peer(sio_client_factory, idle.url, cls=socketio.Client)  # in no room
    assert member.call("join", "local-room")["node"] == busy.name
    before_idle = _received(idle)
    for i in range(200):
        sender.call("to_room", {"room": "local-room", "text": f"m{i}"})
    for i in range(200):
        assert member.next("room_message")["text"] == f"m{i}"
    received_idle = _received(idle) - before_idle
    # the idle node heard heartbeats (about one per node per second), no emit
    assert received_idle < 20, f"the idle node received {received_idle} messages"
    assert bystander.none_of("room_message", wait=0.2)


def test_an_emit_right_after_a_join_reaches_the_new_member_on_another_node(
        node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(count=2)
    sender = Peer(sio_client_factory, first.url, cls=socketio.Client)
    joiner = Peer(sio_client_factory, second.url, cls=socketio.Client)
    for i in range(20):  # a room nobody on either node was in: a new channel each time
        room = f"fresh-{i}"
        assert joiner.call("join", room)["node"] == second.name
        sender.call("to_room", {"room": room, "text": room})
        assert joiner.next("room_message", timeout=5)["text"] == room
    assert metric(second, "socketio_bus", kind="followed_channels") >= 20
    assert metric(second, "socketio_bus", kind="follow_timeouts") == 0


def test_a_second_member_waits_for_the_subscription_the_first_asked_for() -> None:
    # in a reconnect storm the members of one room resume on a node together:
    # the first asks for the channel, the others must not replay and go on
    # before Redis confirmed it, or what is published meanwhile is lost
    tasks = _Tasks()
    follower = ChannelFollower(tasks, threading.Event)
    pubsub = follower.pubsub = _PubSub()
    assert not follower.follow("r")  # the first member: asks, does not wait here
    tasks.run()
    assert not follower.follow("r", wait=0.05)  # sent, not confirmed: waits, times out
    threading.Timer(0.05, follower.confirmed, args=("r",)).start()
    assert follower.follow("r", wait=5)  # woken by the confirmation
    assert follower.is_confirmed("r") and follower.follow("r", wait=5)
    assert pubsub.commands == [("subscribe", ("r",))]  # asked once
    follower.detach(pubsub)  # the subscription is lost: nothing confirmed
    assert not follower.is_confirmed("r") and follower.followed() == ["r"]


def test_wait_confirmed_waits_for_every_channel_within_one_deadline() -> None:
    follower = ChannelFollower(lambda task: task(), threading.Event)
    follower.pubsub = _PubSub()
    follower.follow("a")
    follower.follow("b")
    follower.confirmed("a")
    assert not follower.wait_confirmed(["a", "b"], 0.05)  # b never confirmed
    assert follower._waiters == {}  # a missed deadline leaves no waiter behind
    threading.Timer(0.05, follower.confirmed, args=("b",)).start()
    assert follower.wait_confirmed(["a", "b"], 5)


def test_wait_confirmed_gives_up_on_a_channel_nobody_follows() -> None:
    # its last member left meanwhile: no confirmation will come
    follower = ChannelFollower(lambda task: task(), threading.Event)
    follower.pubsub = _PubSub()
    assert not follower.wait_confirmed(["never-followed"], 5)
    assert follower.followed() == []  # waiting never follows


def test_an_answer_to_an_earlier_subscribe_does_not_confirm_a_later_one() -> None:
    # the last member leaves and a new one comes back at once: SUBSCRIBE,
    # UNSUBSCRIBE, SUBSCRIBE are on their way; the first answer must not
    # wake the new member while Redis still has the UNSUBSCRIBE to process
    tasks = _Tasks()
    follower = ChannelFollower(tasks, threading.Event)
    pubsub = follower.pubsub = _PubSub()
    follower.follow("r")
    tasks.run()
    follower.unfollow("r")
    tasks.run()
    follower.follow("r")
    tasks.run()
    assert pubsub.commands == [("subscribe", ("r",)), ("unsubscribe", ("r",)),
                               ("subscribe", ("r",))]
    follower.confirmed("r")  # answers the first SUBSCRIBE
    assert not follower.is_confirmed("r")
    assert not follower.wait_confirmed(["r"], 0.05)
    follower.unsubscribed("r")
    assert not follower.is_confirmed("r")
    threading.Timer(0.05, follower.confirmed, args=("r",)).start()
    assert follower.wait_confirmed(["r"], 5)  # the answer to the last SUBSCRIBE


def test_a_new_subscription_counts_what_the_listener_subscribed_itself() -> None:
    follower = ChannelFollower(lambda task: task(), threading.Event)
    follower.follow("a")
    pubsub = _PubSub()
    follower.attach(pubsub, ["a"])
    follower.sent(["b"])
    follower.confirmed("a")
    assert follower.is_confirmed("a")
    follower.detach(pubsub)
    assert not follower.is_confirmed("a")
