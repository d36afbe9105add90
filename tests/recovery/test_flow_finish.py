"""RecoveryFlow.finish on a real recovery stream in Redis: the tail of what
was missed is read only once the connection's rooms are live on this node,
and a connection whose rooms do not become live is closed unserved."""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest

from cluster import SocketIO
from cluster.recovery.flow import RecoveryFlow
from cluster.recovery.replay import Replay
from tests.recovery.conftest import FlowStream, StreamReader, emit


class RoomsGoLive:
    """``await_rooms`` of a busy node: while it waits for the subscription,
    another node publishes to the room; then it answers ``live``."""

    def __init__(self, publish: Any, live: bool) -> None:
        self.publish, self.live = publish, live
        self.asked: list[tuple[str, list[Any]]] = []

    def __call__(self, namespace: str, rooms: list[Any], timeout: float) -> bool:
        self.asked.append((namespace, sorted(map(str, rooms))))
        self.publish()
        return self.live


@pytest.fixture()
def setup(flow_stream: FlowStream) -> Any:
    log, client, codec = flow_stream
    app = flask.Flask(__name__)
    socketio = SocketIO(app, session_store="memory", connection_state_recovery=True)
    return app, socketio, log, client, codec


def _connected(app: Any, socketio: Any) -> tuple[Any, str]:
    test_client = socketio.test_client(app)
    sid = socketio.server.manager.sid_from_eio_sid(test_client.eio_sid, "/")
    socketio.server.enter_room(sid, "feed", namespace="/")
    test_client.get_received()
    return test_client, sid


def _events(test_client: Any) -> list[Any]:
    return [message["args"][0] for message in test_client.get_received()
            if message["name"] == "e"]


def test_what_is_published_until_the_rooms_are_live_is_replayed(setup: Any) -> None:
    app, socketio, log, client, codec = setup
    test_client, sid = _connected(app, socketio)
    offset = log.append(client, codec.seal(emit("feed", 0), "h"))
    replayed = log.append(client, codec.seal(emit("feed", 1), "h"))
    replay = Replay(packets=[(replayed, json.loads(emit("feed", 1)))], covered=replayed)
    # published after the replay was read, before this node's subscription
    # to the room was confirmed: live delivery never sees it
    rooms = RoomsGoLive(lambda: log.append(client, codec.seal(emit("feed", 2), "h")),
                        live=True)
    flow = RecoveryFlow(socketio.server, lambda: StreamReader(log, client), rooms)
    socketio.server.packet_hold.start(test_client.eio_sid)
    flow.finish(test_client.eio_sid, sid, "/", offset, replay)
    assert rooms.asked == [("/", sorted(["feed", sid]))]
    assert _events(test_client) == [1, 2]
    assert socketio.server.counters["recoveries"] == 1


def test_a_connection_whose_rooms_do_not_go_live_is_closed_unserved(
        setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    app, socketio, log, client, codec = setup
    test_client, sid = _connected(app, socketio)
    offset = log.append(client, codec.seal(emit("feed", 0), "h"))
    replayed = log.append(client, codec.seal(emit("feed", 1), "h"))
    replay = Replay(packets=[(replayed, json.loads(emit("feed", 1)))], covered=replayed)
    rooms = RoomsGoLive(lambda: None, live=False)
    closed: list[str] = []
    server = socketio.server
    flow = RecoveryFlow(server, lambda: StreamReader(log, client), rooms)
    server.packet_hold.start(test_client.eio_sid)
    server.eio.disconnect = closed.append  # the in-process client has no socket to close
    with caplog.at_level("WARNING", logger="cluster.node.server"):
        flow.finish(test_client.eio_sid, sid, "/", offset, replay)
    assert closed == [test_client.eio_sid]
    assert _events(test_client) == []  # nothing: it recovers again from offset 0
    assert server.counters["recovery_rooms_late"] == 1
    assert server.counters["recoveries"] == 0
    assert "did not reach this node" in caplog.text
