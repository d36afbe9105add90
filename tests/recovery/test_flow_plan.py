"""RecoveryFlow.plan on a real recovery stream in Redis: which offsets are
trusted, what is replayed, and what a plain resume is counted as."""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest
import redis

from cluster import SocketIO
from cluster.bus.codec import Codec, Dropped
from cluster.flask_integration.bound_session import BoundSession
from cluster.recovery.flow import RecoveryFlow
from cluster.recovery.stream import RecoveryLog
from cluster.sessions.connection_sessions import ENVIRON_KEY
from session_store import ForkedSession


class StreamReader:
    """The reads RecoveryFlow needs, straight from a RecoveryLog."""

    def __init__(self, log: RecoveryLog, client: Any) -> None:
        self.log, self.client = log, client

    def readable(self, offset: str) -> bool:
        return self.log.readable(self.client, offset)

    def contains(self, offset: str) -> bool:
        return self.log.contains(self.client, offset)

    def page(self, offset: str, count: int) -> Any:
        return self.log.page(self.client, offset, count)

    def scan(self, offset: str, namespace: str, sid: str, rooms: Any) -> Any:
        return self.log.scan(self.client, offset, namespace, sid, rooms)


def _emit(room: str | None, n: int) -> str:
    return json.dumps({"method": "emit", "event": "e", "data": [n], "namespace": "/",
                       "room": room, "skip_sid": None, "callback": None, "host_id": "h"})


@pytest.fixture()
def setup(redis_url: str) -> Any:
    codec = Codec()

    def open_entry(payload: bytes) -> Any:
        try:
            return codec.open_archived(payload)[0]
        except Dropped:
            return None

    client = redis.Redis.from_url(redis_url)
    log = RecoveryLog("plan", open_entry, window=60)
    app = flask.Flask(__name__)
    socketio = SocketIO(app, session_store="memory", max_replay_packets=3,
                        connection_state_recovery=True)
    server = socketio.server
    flow = RecoveryFlow(server, lambda: StreamReader(log, client), lambda *_: True)
    yield server, flow, log, client, codec, socketio.sessions
    client.close()


def _environ(start: str | None, offset: str | None, rooms: set[str]) -> dict[str, Any]:
    bound = BoundSession(session=ForkedSession({}), offset=offset,
                         base_offsets={"/": start} if start else {}, rooms={"/": rooms})
    return {ENVIRON_KEY: bound}


def test_the_missed_packets_of_its_rooms_are_replayed(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    start = log.last_offset(client)
    first = log.append(client, codec.seal(_emit("feed", 0), "h"))
    log.append(client, codec.seal(_emit("other", 1), "h"))
    last = log.append(client, codec.seal(_emit(None, 2), "h"))
    replay = flow.plan(_environ(start, first, {"feed"}), "/", "sid1", sessions)
    assert replay is not None
    assert [message["data"] for _, message in replay.packets] == [[2]]
    assert replay.covered == last
    assert server.counters["recovery_failed"] == 0


@pytest.mark.parametrize("offset, reason", [
    ("nonsense", "malformed offset"),
    ("-1-0", "malformed offset"),
    ("1-0", "offset older than the session's start"),
    ("99999999999999-0", "offset not in the recovery log"),
])
def test_an_offset_it_cannot_trust_is_a_plain_resume(setup: Any, offset: str, reason: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    server, flow, log, client, codec, sessions = setup
    log.append(client, codec.seal(_emit(None, 0), "h"))
    start = log.last_offset(client)
    with caplog.at_level("INFO", logger="cluster.node.server"):
        assert flow.plan(_environ(start, offset, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_failed"] == 1
    assert reason in caplog.text


def test_no_recorded_start_no_recovery(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    offset = log.append(client, codec.seal(_emit(None, 0), "h"))
    assert flow.plan(_environ(None, offset, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_failed"] == 1


def test_more_than_max_replay_packets_missed_is_refused_whole(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    start = log.last_offset(client)
    for n in range(4):  # max_replay_packets=3
        log.append(client, codec.seal(_emit(None, n), "h"))
    assert flow.plan(_environ(start, None, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_over_limit"] == 1
    assert server.counters["recovery_failed"] == 1
