"""What one stranger may cost a node (issue 15), on real nodes and Redis:
nothing kept for a failed CONNECT, recovery only from the client's own
history and bounded, room joins O(1) in Redis and capped, a connect timeout,
and a rate limit on by default. In-process checks of the same rules last."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pytest
import redis
import requests
import socketio
from flask import Flask

from cluster import SocketIO, join_room
from cluster.exceptions import ConfigurationError, RoomLimitExceeded
from cluster.node.connect_deadlines import ConnectDeadlines
from cluster.node.limits import ALLOW, DROP, FLOOD, MAX_REMEMBERED_CUTS, Limits, RateLimiter
from tests.harness.peers import WAIT, Peer
from tests.harness.raw_websocket import RawWebSocket, metric
from tests.harness.waiting import wait_for

RECOVERY = {"RECOVERY_WINDOW": "60"}
STREAM = "{flask-socketio}:recovery"


# -- helpers -----------------------------------------------------------------

def _metrics(node: Any) -> str:
    return requests.get(f"{node.url}/metrics", timeout=5).text


def _counter(node: Any, kind: str) -> float:
    return metric(node, "socketio_server_events_total", kind)


def _connections(node: Any) -> float:
    for line in _metrics(node).splitlines():
        if line.startswith("socketio_connections "):
            return float(line.split()[1])
    raise AssertionError("socketio_connections not in /metrics")


def _recording_client(factory: Any, url: str, auth: dict[str, Any]) -> tuple[Any, list[str], Any]:
    """A python client that records room messages from the first packet on
    (a replay arrives before the connect handler's ``welcome``)."""
    client = factory(cls=socketio.Client, reconnection=False)
    texts: list[str] = []
    offsets: list[str] = []
    welcome: queue.Queue[Any] = queue.Queue()

    @client.on("room_message")
    def on_room_message(message: dict[str, Any], *rest: Any) -> None:
        texts.append(message["text"])
        offsets.extend(rest)  # recovery on: the offset is the last argument

    client.on("welcome", welcome.put)
    client.connect(url, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    client.offsets = offsets
    return client, texts, welcome.get(timeout=WAIT)


# -- part 2: nothing kept for a CONNECT that fails ------------------------------

def test_failed_connects_leave_nothing_in_redis_and_are_closed(
        node_factory: Any, redis_url: str) -> None:
    (node,) = node_factory()
    client = redis.Redis.from_url(redis_url)
    strangers = []
    for _ in range(10):
        unknown = RawWebSocket(node)
        unknown.send("40/nope,")
        assert unknown.read_until("44").startswith("44/nope,")
        refused = RawWebSocket(node)
        refused.send('40{"refuse":"false"}')
        refused.read_until("44")
        raised = RawWebSocket(node)
        raised.send('40{"refuse":"raise"}')
        assert "go away" in raised.read_until("44")
        strangers += [unknown, refused, raised]
    assert client.keys("sio:sess:*") == []
    # and the node closes them, a moment after their CONNECT_ERROR
    for stranger in strangers:
        assert stranger.closed_within(10)
    wait_for(lambda: _connections(node) == 0, what="the refused connections closed")
    assert _counter(node, "connect_timeouts") == len(strangers)
    # an accepted connection is persisted, so the check above could fail
    accepted = RawWebSocket(node)
    accepted.send("40")
    assert '"pid"' in accepted.read_until("40")
    assert client.keys("sio:sess:*")


# -- part 5: a connect timeout -------------------------------------------------

def test_connections_that_never_connect_are_closed_after_connect_timeout(
        node_factory: Any) -> None:
    (node,) = node_factory(message_queue=None, env={"CLUSTER_CONNECT_TIMEOUT": "1"})
    silent = RawWebSocket(node)
    polling = requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert polling.status_code == 200 and '"sid"' in polling.text
    member = RawWebSocket(node)
    member.send("40")
    member.read_until("40")
    assert silent.closed_within(8)
    wait_for(lambda: _counter(node, "connect_timeouts") == 2, what="both timeouts counted")
    wait_for(lambda: _connections(node) == 1, what="only the connected client left")
    member.send('420["context"]')  # the connected client is still served
    assert member.read_until("430").startswith('430[{"node"')


def test_connect_timeout_works_in_threading_mode() -> None:
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from cluster.devtools.processes import free_port

    port = free_port()
    script = ("from tests.apps.chat_app import app, socketio; "
              "from cluster.node.limits import Limits; "
              "socketio.server.set_limits(Limits(connect_timeout=1)); "
              f"socketio.run(app, host='127.0.0.1', port={port}, allow_unsafe_werkzeug=True)")
    process = subprocess.Popen([sys.executable, "-c", script],
                               cwd=Path(__file__).resolve().parents[2],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = SimpleNamespace(host="127.0.0.1", port=port)
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=20, what="the threaded server")
        silent = RawWebSocket(server)
        assert silent.closed_within(8)
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- part 6: a rate limit on by default ----------------------------------------

def test_rate_limit_is_on_by_default_logs_once_and_cuts_a_flood(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    peer = Peer(sio_client_factory, node.url, cls=socketio.Client)
    acks: list[Any] = []
    started = time.monotonic()
    for _ in range(600):
        peer.client.emit("g_leak", callback=lambda *args: acks.append(args))
    wait_for(lambda: len(acks) + _counter(node, "rate_limited_events") >= 600,
              what="every event handled or dropped")
    elapsed = time.monotonic() - started
    # a burst of 200, then 100/s
    assert 200 <= len(acks) <= 200 + 100 * elapsed + 20
    assert _counter(node, "rate_limited_events") == 600 - len(acks)
    assert node.log_text().count("exceeds max_events_per_second") == 1
    assert peer.client.connected and _counter(node, "flood_disconnects") == 0

    flooder = Peer(sio_client_factory, node.url, cls=socketio.Client, reconnection=False)
    deadline = time.monotonic() + WAIT
    while not flooder.disconnected.is_set() and time.monotonic() < deadline:
        try:
            flooder.client.emit("g_leak")
        except socketio.exceptions.BadNamespaceError:
            break  # the node cut it
    assert flooder.disconnected.wait(WAIT)
    wait_for(lambda: _counter(node, "flood_disconnects") == 1, what="the flood counted")
    assert peer.call("g_leak") == {"marker": None}  # everyone else is still served


# -- part 3: recovery only from the client's own history -------------------------

def test_recovery_never_replays_what_came_before_the_session(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    (node,) = node_factory(env=RECOVERY)
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    for n in range(3):
        sender.call("to_room", {"room": "feed", "text": f"before{n}"})
    first_offset = redis.Redis.from_url(redis_url).xrange(STREAM, count=1)[0][0].decode()
    newcomer = Peer(sio_client_factory, node.url)
    newcomer.call("join", "feed")
    pid = newcomer.client.pid()
    newcomer.client.disconnect()
    for forged in ("0-0", first_offset):
        wait_for(lambda: _connections(node) == 1, what="the newcomer gone")
        again, texts, welcome = _recording_client(sio_client_factory, node.url,
                                                  {"pid": pid, "offset": forged})
        assert welcome["resumed"] is True and welcome["recovered"] is False
        assert "feed" in welcome["rooms"]
        assert texts == []  # a replay would have arrived before the welcome
        again.disconnect()
    assert _counter(node, "recovery_failed") == 2
    assert _counter(node, "recoveries") == 0


def test_recovery_is_bounded_and_falls_back_to_a_plain_resume(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(env=RECOVERY, extra_args=["--max-replay-packets", "5"])
    sender = Peer(sio_client_factory, node.url, cls=socketio.Client)
    listener = Peer(sio_client_factory, node.url)
    listener.call("join", "feed")
    sender.call("to_room", {"room": "feed", "text": "seen"})
    assert listener.next("room_message")["text"] == "seen"
    pid, offset = listener.client.pid(), listener.client.offset()
    old_sid = listener.client.get_sid()
    listener.client.disconnect()
    wait_for(lambda: _connections(node) == 1, what="the listener gone")
    for n in range(3):
        sender.call("to_room", {"room": "feed", "text": f"a{n}"})
    back, texts, welcome = _recording_client(sio_client_factory, node.url,
                                             {"pid": pid, "offset": offset})
    assert welcome["recovered"] is True and back.get_sid() == old_sid
    assert texts == ["a0", "a1", "a2"]  # within the bound: replayed, in order
    last = back.offsets[-1]
    back.disconnect()
    wait_for(lambda: _connections(node) == 1, what="the listener gone again")
    for n in range(8):
        sender.call("to_room", {"room": "feed", "text": f"b{n}"})
    again, texts, welcome = _recording_client(sio_client_factory, node.url,
                                              {"pid": pid, "offset": last})
    assert welcome["resumed"] is True and welcome["recovered"] is False
    assert "feed" in welcome["rooms"] and texts == []
    assert _counter(node, "recovery_over_limit") == 1
    assert "max_replay_packets=5" in node.log_text()


def test_recovery_reads_do_not_wait_for_the_publisher_lock(redis_url: str) -> None:
    from cluster.bus.redis_manager import RedisManager

    manager = RedisManager(redis_url, recovery_window=60)
    holding, release = threading.Event(), threading.Event()

    def publisher_busy() -> None:
        with manager.publisher.lock:
            holding.set()
            release.wait(WAIT)

    threading.Thread(target=publisher_busy, daemon=True).start()
    assert holding.wait(WAIT)
    result: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: result.update(
        last=manager.recovery.last_offset(), readable=manager.recovery.readable("0-0")),
        daemon=True)
    try:
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "a recovery read waited for the publisher"
        assert result == {"last": "0-0", "readable": True}
    finally:
        release.set()
        reader.join(5)
        manager.transport.close()


# -- part 4: room joins O(1) in Redis, and capped -------------------------------

def test_room_joins_write_the_same_few_bytes_and_are_capped(
        node_factory: Any, sio_client_factory: Any, redis_url: str) -> None:
    (node,) = node_factory(extra_args=["--max-rooms-per-connection", "340",
                                       "--max-events-per-second", "0"])
    client = redis.Redis.from_url(redis_url)
    peer = Peer(sio_client_factory, node.url, cls=socketio.Client)
    pad = "x" * 40

    def bytes_per_join(first: int, count: int) -> float:
        before = client.info("stats")["total_net_input_bytes"]
        for n in range(first, first + count):
            peer.call("join", f"room-{n:04d}-{pad}")
        return (client.info("stats")["total_net_input_bytes"] - before) / count

    early = bytes_per_join(0, 20)
    for n in range(20, 300):
        peer.call("join", f"room-{n:04d}-{pad}")
    late = bytes_per_join(300, 20)
    # rewriting the record made a join at 300 rooms write ~15 KB
    assert late < 2 * early + 100 and late < 1000, (early, late)
    bytes_per_join(320, 20)
    refused = peer.call("join", "one-too-many")
    assert refused == {"error": "RoomLimitExceeded", "scope": "/"}
    assert _counter(node, "room_limit_refusals") == 1
    assert len(peer.call("leave", "no-such-room")["rooms"]) == 341  # its own room too
    (rooms_key,) = client.keys("sio:sess:conn:*:rooms")
    assert client.scard(rooms_key) == 340
    assert client.pttl(rooms_key) > 0


# -- the same rules in process -----------------------------------------------------

def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k"
    return app


def test_failed_connects_keep_nothing_in_process() -> None:
    app = _app()
    socketio = SocketIO(app, session_store="memory")

    @socketio.on("connect")
    def connect(auth: Any) -> bool:
        return not (auth and auth.get("refuse"))

    refused = socketio.test_client(app, auth={"refuse": True})
    refused.connect(namespace="/nope")
    assert not refused.is_connected() and not refused.is_connected("/nope")
    sessions = socketio.sessions
    assert sessions.local == {} and sessions.counters["persisted"] == 0
    assert sessions.store._sessions == {} and sessions.store._resumes == {}
    environ = socketio.server.environ[refused.eio_sid]
    assert sessions.session_for(environ) is None
    accepted = socketio.test_client(app)
    assert accepted.is_connected() and len(sessions.local) == 1
    assert sessions.counters["persisted"] == 1


def test_join_room_past_the_cap_raises_an_error_naming_the_option() -> None:
    app = _app()
    socketio = SocketIO(app, max_rooms_per_connection=3)
    errors: list[Exception] = []

    @socketio.on("join")
    def join(room: str) -> str:
        join_room(room)
        return "ok"

    @socketio.on_error_default
    def on_error(exc: Exception) -> str:
        errors.append(exc)
        return str(exc)

    client = socketio.test_client(app)
    assert [client.emit("join", f"r{n}", callback=True) for n in range(3)] == ["ok"] * 3
    message = client.emit("join", "r3", callback=True)
    assert isinstance(errors[0], RoomLimitExceeded)
    assert "max_rooms_per_connection" in message and "--max-rooms-per-connection" in message
    assert client.emit("join", "r0", callback=True) == "ok"  # already in: no growth


def test_rate_limit_defaults_and_off_switch() -> None:
    assert Limits.from_options({}).max_events_per_second == 100
    assert Limits.from_options({"max_events_per_second": None}).max_events_per_second is None
    assert Limits.from_options({"max_events_per_second": 0}).max_events_per_second is None
    with pytest.raises(ConfigurationError, match="max_events_per_second"):
        Limits.from_options({"max_events_per_second": -1})
    with pytest.raises(ConfigurationError, match="max_rooms_per_connection"):
        Limits.from_options({"max_rooms_per_connection": 0})
    app = _app()
    socketio = SocketIO(app, max_events_per_second=None)
    seen: list[int] = []
    socketio.on_event("tick", seen.append)
    client = socketio.test_client(app)
    for index in range(500):
        client.emit("tick", index)
    assert len(seen) == 500


def test_rate_limiter_logs_once_per_window_and_detects_a_flood(caplog: Any) -> None:
    limiter = RateLimiter(10)
    with caplog.at_level(logging.WARNING, logger="cluster.node.limits"):
        verdicts = [limiter.take("a", 0.0) for _ in range(299)]
    assert verdicts.count(ALLOW) == 20 and verdicts.count(DROP) == 279
    assert len(caplog.records) == 1
    assert limiter.take("a", 0.0) == FLOOD  # 300 events: 10x the rate for 3 s
    assert limiter.take("a", 5.0) == DROP  # until it is gone
    limiter.forget("a")
    # what it had sent is still read while it is cut: no fresh bucket, no
    # second flood (CI saw flood_disconnects counted twice for one flooder)
    assert [limiter.take("a", 5.0) for _ in range(400)] == [DROP] * 400
    assert len(limiter) == 0
    assert limiter.take("b", 5.0) == ALLOW  # an ordinary connection, forgotten,
    limiter.forget("b")
    assert limiter.take("b", 5.0) == ALLOW  # is not remembered


def test_the_rate_limiter_remembers_a_bounded_number_of_cut_connections() -> None:
    limiter = RateLimiter(1)
    for n in range(MAX_REMEMBERED_CUTS + 10):
        key = f"flooder{n}"
        while limiter.take(key, 0.0) != FLOOD:
            pass
        limiter.forget(key)
    assert limiter.take("flooder0", 0.0) == ALLOW  # the oldest were let go
    assert limiter.take(f"flooder{MAX_REMEMBERED_CUTS + 9}", 0.0) == DROP


def test_connect_deadlines_close_refused_connections_first() -> None:
    spawned: list[Any] = []
    deadlines = ConnectDeadlines(45, lambda sid, reason: None, spawned.append, time.sleep)
    now = time.monotonic()
    deadlines.opened("silent")
    deadlines.opened("refused")
    deadlines.refused("refused")
    deadlines.opened("member")
    deadlines.connected("member")
    assert len(spawned) == 1  # one sweeper for all of them
    assert deadlines.expired(now + 2) == [("refused", "CONNECT refused")]
    assert deadlines.expired(now + 46) == [("silent", "no Socket.IO CONNECT")]
    assert len(deadlines) == 0


def test_connection_rooms_are_a_set_and_old_records_still_load(redis_url: str) -> None:
    import json

    from cluster.sessions.connection_state import RedisConnectionState

    client = redis.Redis.from_url(redis_url)
    state = RedisConnectionState(client, "t:")
    state.save("s1", {"sids": {"/": "a"}, "base": {"/": "1-0"}}, ttl=60)
    state.change_rooms("s1", [("/", "x"), ("/", "y"), ("/chat", "x")], [], ttl=60)
    state.change_rooms("s1", [], [("/", "y")], ttl=60)
    record = state.load("s1")
    assert record["sids"] == {"/": "a"} and record["base"] == {"/": "1-0"}
    assert {ns: sorted(rooms) for ns, rooms in record["rooms"].items()} == {
        "/": ["x"], "/chat": ["x"]}
    assert "rooms" not in json.loads(client.get(state.key("s1")))
    assert 0 < client.pttl(state.rooms_key("s1")) <= 60_000
    # a record written before the rooms set (rooms inside the JSON)
    client.set(state.key("s2"), json.dumps({"sids": {"/": "b"}, "rooms": {"/": ["old"]}}))
    assert state.load("s2")["rooms"] == {"/": ["old"]}
    state.delete("s1")
    assert client.exists(state.key("s1"), state.rooms_key("s1")) == 0
