"""kombu backend on a real RabbitMQ (127.0.0.1:5672), JSON only."""
from __future__ import annotations

import pickle
import socket
import uuid
from pathlib import Path

import pytest

from cluster.bus import KombuManager, create_manager
from tests.bus.conftest import wait_nodes
from tests.harness.fixtures import BUS_SIGNING_SECRET

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def amqp_url() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 "
                    "(apt-get install rabbitmq-server; service rabbitmq-server "
                    "start)")
    return AMQP


def test_create_manager_picks_kombu_for_amqp(amqp_url) -> None:
    assert isinstance(create_manager(amqp_url, write_only=True), KombuManager)


def test_two_nodes_over_rabbitmq_and_pickle_is_never_loaded(
        amqp_url, bus_nodes, connect, tmp_path: Path) -> None:
    channel = f"bus-test-{uuid.uuid4().hex[:8]}"
    n1, n2 = bus_nodes(2, message_queue=amqp_url,
                       extra_args=["--channel", channel])
    a, b = connect(n1), connect(n2)
    wait_nodes(a, 2)
    b.call("join", {"room": "r"})
    a.call("relay", {"to": "r", "payload": "over-amqp"})
    assert b.wait_event("relayed") == ["over-amqp"]
    assert a.call("query", {"op": "room_members", "args": ["r"]})["result"] \
        == [b.sid]

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import kombu
    with kombu.Connection(amqp_url) as conn:
        producer = conn.Producer(exchange=kombu.Exchange(
            channel, type="fanout", durable=False))
        # a pickle with the content type kombu would happily unpickle
        producer.publish(pickle.dumps(Exploit()),
                         content_type="application/x-python-serialize",
                         content_encoding="binary")
    create_manager(amqp_url, channel=channel, write_only=True,
                   signing_secret=BUS_SIGNING_SECRET).emit(
        "relayed", "after", room=b.sid)
    assert b.wait_event("relayed", 2)[-1] == "after"
    assert not marker.exists()
    assert b.call("stats")["stats"]["dropped_malformed"] == 1


def test_room_emits_reach_only_the_nodes_with_members_over_rabbitmq(
        amqp_url, bus_nodes, connect) -> None:
    channel = f"bus-test-{uuid.uuid4().hex[:8]}"
    n1, n2 = bus_nodes(2, message_queue=amqp_url, extra_args=["--channel", channel])
    a, b = connect(n1), connect(n2)
    wait_nodes(a, 2)
    for i in range(10):  # a fresh room each time: its binding is made by the join
        b.call("join", {"room": f"r{i}"})
        a.call("relay", {"to": f"r{i}", "payload": f"p{i}"})
        assert b.wait_event("relayed", i + 1)[-1] == f"p{i}"
    before = a.call("stats")["stats"]["received"]
    for i in range(100):
        a.call("relay", {"to": "r0", "payload": f"q{i}"})
    assert b.wait_event("relayed", 110)[-1] == "q99"
    # n1 has no member of r0: the broker sent it heartbeats, none of the emits
    assert a.call("stats")["stats"]["received"] - before < 20
