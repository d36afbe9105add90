"""RecoveryFlow.plan on a real recovery stream in Redis: which offsets are
trusted, what is replayed, and what a plain resume is counted as."""

from __future__ import annotations

from typing import Any

import flask
import pytest

from cluster import SocketIO
from cluster.flask_integration.bound_session import BoundSession
from cluster.recovery.flow import RecoveryFlow
from cluster.sessions.connection_sessions import ENVIRON_KEY
from session_store import ForkedSession
from tests.recovery.conftest import FlowStream, StreamReader, emit


@pytest.fixture()
def setup(flow_stream: FlowStream) -> Any:
    log, client, codec = flow_stream
    app = flask.Flask(__name__)
    socketio = SocketIO(app, session_store="memory", max_replay_packets=3,
                        connection_state_recovery=True)
    server = socketio.server
    flow = RecoveryFlow(server, lambda: StreamReader(log, client), lambda *_: True)
    return server, flow, log, client, codec, socketio.sessions


def _environ(start: str | None, offset: str | None, rooms: set[str]) -> dict[str, Any]:
    bound = BoundSession(session=ForkedSession({}), offset=offset,
                         base_offsets={"/": start} if start else {}, rooms={"/": rooms})
    return {ENVIRON_KEY: bound}


def test_the_missed_packets_of_its_rooms_are_replayed(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    start = log.last_offset(client)
    first = log.append(client, codec.seal(emit("feed", 0), "h"))
    log.append(client, codec.seal(emit("other", 1), "h"))
    last = log.append(client, codec.seal(emit(None, 2), "h"))
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
    log.append(client, codec.seal(emit(None, 0), "h"))
    start = log.last_offset(client)
    with caplog.at_level("INFO", logger="cluster.node.server"):
        assert flow.plan(_environ(start, offset, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_failed"] == 1
    assert reason in caplog.text


class _UnreadableReader:
    """What the node's reader answers while the recovery stream cannot be read."""

    def offset_facts(self, offset: str) -> None:
        return None


@pytest.mark.parametrize("at_start", [False, True])
def test_an_unreadable_log_is_said_to_be_unreadable(setup: Any, at_start: bool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # not "offset not in the recovery log": the operator looks at Redis,
    # not at the client
    server, _, log, client, codec, sessions = setup
    start = log.last_offset(client)
    offset = start if at_start else log.append(client, codec.seal(emit(None, 0), "h"))
    flow = RecoveryFlow(server, lambda: _UnreadableReader(), lambda *_: True)
    with caplog.at_level("INFO", logger="cluster.node.server"):
        assert flow.plan(_environ(start, offset, set()), "/", "sid1", sessions) is None
    assert "the recovery log is unreadable" in caplog.text
    assert "not in the recovery log" not in caplog.text
    assert server.counters["recovery_failed"] == 1


def test_no_recorded_start_no_recovery(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    offset = log.append(client, codec.seal(emit(None, 0), "h"))
    assert flow.plan(_environ(None, offset, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_failed"] == 1


def test_more_than_max_replay_packets_missed_is_refused_whole(setup: Any) -> None:
    server, flow, log, client, codec, sessions = setup
    start = log.last_offset(client)
    for n in range(4):  # max_replay_packets=3
        log.append(client, codec.seal(emit(None, n), "h"))
    assert flow.plan(_environ(start, None, set()), "/", "sid1", sessions) is None
    assert server.counters["recovery_over_limit"] == 1
    assert server.counters["recovery_failed"] == 1
