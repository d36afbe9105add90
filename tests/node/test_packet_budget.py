"""Every packet type a client sends is bounded (issue 24, findings 1, 6, 8):
CONNECT and DISCONNECT draw on the rate limit (a CONNECT costs five
events), ACKs for ids never issued are dropped, counted and charged,
namespaces per connection are capped, and reserved event names are
malformed. Real nodes and raw websockets first; in-process checks last."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from flask import Flask

from cluster import SocketIO
from cluster.exceptions import ConfigurationError
from cluster.node.limits import ALLOW, CONNECT_COST, DROP, FLOOD, Limits, RateLimiter
from cluster.node.packet_budget import RATE_LIMITED
from cluster.node.packet_dispatch import RESERVED_EVENTS
from cluster.runner.cli import build_parser, node_config
from tests.harness.raw_websocket import RawWebSocket, masked_text_frame, metric
from tests.harness.waiting import wait_for

APP = "tests.apps.packet_budget_app:socketio"


def _counter(node: Any, kind: str) -> float:
    return metric(node, "socketio_server_events_total", kind)


def _handler_runs(node: Any) -> dict[str, Any]:
    runs: dict[str, Any] = requests.get(f"{node.url}/handler_runs", timeout=5).json()
    return runs


def _flood(ws: RawWebSocket, frames: bytes, rounds: int) -> None:
    """Send ``frames`` up to ``rounds`` times without reading, until the
    node closes the connection."""
    try:
        for _ in range(rounds):
            ws.sock.sendall(frames)
    except OSError:
        pass  # the node cut it


def _connected(node: Any) -> RawWebSocket:
    ws = RawWebSocket(node)
    ws.send("40")
    ws.read_until("40")
    return ws


# -- every packet type costs tokens -----------------------------------------------

def test_a_disconnect_connect_loop_is_cut_after_a_few_connect_handler_runs(
        node_factory: Any) -> None:
    (node,) = node_factory(app=APP, extra_args=["--max-events-per-second", "5"])
    looping = _connected(node)
    # the review's loop: 430 connect/disconnect handler runs a second at 5/s
    _flood(looping, (masked_text_frame("41") + masked_text_frame("40")) * 100, rounds=30)
    assert looping.closed_within(10)
    wait_for(lambda: _counter(node, "flood_disconnects") == 1, what="the flood counted")
    runs = wait_for(lambda: (r := _handler_runs(node))["runs"]["disconnect"]
                     == r["runs"]["connect"] and r, what="the last disconnect handled")
    # the first CONNECT is free, a 10-token burst pays one more, plus what
    # refills (5 tokens/s) before the flood cut
    assert 1 <= runs["runs"]["connect"] <= 4, runs
    # other clients are served, their namespace connects pass
    other = _connected(node)
    other.send("40/chat,")
    assert (other.read() or "").startswith("40/chat,")


def test_acks_for_ids_never_issued_are_dropped_counted_and_cut(node_factory: Any) -> None:
    (node,) = node_factory(app=APP)
    ws = _connected(node)
    # an ack the server asked for still reaches it
    ws.send('421["ask_me","ready?"]')
    question = ws.read_until("42")
    ack_id = question[2:question.index("[")]
    assert ack_id.isdigit() and json.loads(question[len(ack_id) + 2:]) == ["question", "ready?"]
    ws.send(f'43{ack_id}["yes"]')
    assert ws.read_until("431") == '431["yes"]'
    assert _counter(node, "unknown_acks") == 0
    ws.send(f'43{ack_id}["again"]')  # answered already: unknown now
    wait_for(lambda: _counter(node, "unknown_acks") == 1, what="the replayed ack counted")
    # the review sent 181,800 of these in 5 s, none counted or cut
    _flood(ws, masked_text_frame('43987654["x"]') * 500, rounds=40)
    assert ws.closed_within(10)
    wait_for(lambda: _counter(node, "flood_disconnects") == 1, what="the flood counted")
    # 100 tokens/s: cut once it asked for 3,000 tokens within 3 s
    assert _counter(node, "unknown_acks") >= 2900
    assert node.log_text().count("never issued") == 1  # one line per 10 s window
    fresh = _connected(node)  # the node serves new connections
    fresh.send('421["ping_ns"]')
    assert fresh.read_until("43") == '431["/"]'


def test_the_eleventh_namespace_is_refused_and_the_other_ten_keep_working(
        node_factory: Any) -> None:
    (node,) = node_factory(app=APP)
    ws = _connected(node)
    for n in range(1, 10):  # with "/", ten namespaces: the default cap
        ws.send(f"40/n{n},")
        reply = ws.read()
        assert reply is not None and reply.startswith(f"40/n{n},"), reply
    ws.send("40/n10,")
    refused = ws.read()
    assert refused is not None and refused.startswith("44/n10,"), refused
    assert json.loads(refused[len("44/n10,"):]) == {"message": (
        "Too many namespaces: a connection may be connected to at most 10 at once (the "
        "server's max_namespaces_per_connection); disconnect from one first")}
    assert _counter(node, "namespace_limit_refusals") == 1
    for namespace in ("/n3", "/n9"):
        ws.send(f'42{namespace},7["ping_ns"]')
        assert ws.read_until("43") == f'43{namespace},7["{namespace}"]'
    ws.send('427["ping_ns"]')
    assert ws.read_until("43") == '437["/"]'
    # the cap counts the namespaces it is in now: leave one, join another
    ws.send("41/n9,")
    ws.send("40/n10,")
    assert ws.read_until("40/n10,")
    assert _handler_runs(node)["runs"]["connect"] == 11  # never for the refused one
    assert "max_namespaces_per_connection=10" in node.log_text()


def test_reserved_event_names_close_the_connection_and_run_no_handler(
        node_factory: Any) -> None:
    (node,) = node_factory(app=APP)
    names = sorted(RESERVED_EVENTS)
    assert names == ["connect", "connect_error", "disconnect", "disconnecting",
                     "newListener", "removeListener"]
    for count, name in enumerate(names, start=1):
        ws = _connected(node)
        ws.send(f'42["{name}",{{"forged":"environ"}},{{"forged":"auth"}}]')
        assert ws.closed_within(10), name
        wait_for(lambda: _counter(node, "malformed_packets") == count,  # noqa: B023
                  what=f"the {name!r} event counted as malformed")
    # each connection ran its handlers once, for its real CONNECT and close
    runs = wait_for(lambda: (r := _handler_runs(node))["runs"]["disconnect"] == len(names)
                     and r, what="every close handled")
    assert runs["runs"]["connect"] == len(names)
    assert "forged" not in json.dumps(runs)
    # one line per 10 s window for the node, whatever the number of clients
    assert node.log_text().count("is reserved") == 1


# -- the limiter's weights ---------------------------------------------------------

def test_a_connect_costs_five_tokens_and_owed_packets_go_into_debt() -> None:
    limiter = RateLimiter(5)  # burst 10
    assert [limiter.take("a", 0.0, CONNECT_COST) for _ in range(3)] == [ALLOW, ALLOW, DROP]
    assert limiter.take("a", 0.0) == DROP  # the burst is spent
    assert limiter.take("a", 1.0, CONNECT_COST) == ALLOW  # a second refills five
    # a DISCONNECT or an issued ACK passes without tokens, as debt
    assert limiter.take("a", 1.0, owed=True) == ALLOW
    assert limiter.take("a", 1.1) == DROP  # -1 + 0.5: the debt is paid first
    assert limiter.take("a", 2.0) == ALLOW
    # a connection's first CONNECT is free, later ones are not
    assert limiter.take("c", 0.0, CONNECT_COST, opening=True) == ALLOW
    assert [limiter.take("c", 0.0, CONNECT_COST, opening=True) for _ in range(3)] == [
        ALLOW, ALLOW, DROP]
    # at a low rate a CONNECT costs one second of it, never the whole burst
    slow = RateLimiter(1)  # burst 2
    assert slow.take("b", 0.0, CONNECT_COST) == ALLOW
    assert slow.take("b", 0.0) == ALLOW
    assert slow.take("b", 0.0) == DROP


def test_a_flood_is_measured_in_tokens_whatever_the_packets() -> None:
    limiter = RateLimiter(10)  # burst 20, flood at 300 tokens asked within 3 s
    verdicts = [limiter.take("connects", 0.0, CONNECT_COST) for _ in range(60)]
    assert verdicts[:4] == [ALLOW] * 4 and verdicts[4:-1] == [DROP] * 55
    assert verdicts[-1] == FLOOD  # 60 CONNECTs: 300 tokens
    owed = [limiter.take("acks", 0.0, owed=True) for _ in range(300)]
    assert owed[:-1] == [ALLOW] * 299 and owed[-1] == FLOOD
    assert limiter.take("acks", 1.0, owed=True) == DROP  # cut: nothing more is handled


def test_max_namespaces_per_connection_is_an_option_and_a_flag() -> None:
    assert Limits.from_options({}).max_namespaces_per_connection == 10
    assert Limits.from_options(
        {"max_namespaces_per_connection": 3}).max_namespaces_per_connection == 3
    with pytest.raises(ConfigurationError, match="max_namespaces_per_connection"):
        Limits.from_options({"max_namespaces_per_connection": 0})
    socketio = SocketIO(_app(), max_namespaces_per_connection=4)
    assert socketio.config is not None
    assert socketio.config.limits.max_namespaces_per_connection == 4
    args = build_parser().parse_args(["node", "--app", "chat:socketio",
                                      "--max-namespaces-per-connection", "25"])
    assert node_config(socketio.config, args).limits.max_namespaces_per_connection == 25


# -- the same rules in process -------------------------------------------------------

def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    return app


def test_in_process_connects_are_charged_and_capped() -> None:
    app = _app()
    socketio = SocketIO(app, namespaces="*", max_events_per_second=5)
    client = socketio.test_client(app)  # "/": the first CONNECT is free
    client.connect(namespace="/a")  # 5 of 10 tokens
    client.connect(namespace="/b")  # 5 more: the burst is spent
    client.connect(namespace="/c")
    assert client.is_connected("/b") and not client.is_connected("/c")
    assert client.connect_errors["/c"] == RATE_LIMITED
    assert socketio.server.counters["rate_limited_events"] == 1

    app = _app()
    socketio = SocketIO(app, namespaces="*", max_namespaces_per_connection=2)
    other = socketio.test_client(app)
    other.connect(namespace="/a")
    other.connect(namespace="/b")
    assert other.is_connected("/a") and not other.is_connected("/b")
    assert "max_namespaces_per_connection" in other.connect_errors["/b"]["message"]
    assert socketio.server.counters["namespace_limit_refusals"] == 1
    other.disconnect(namespace="/a")
    other.connect(namespace="/b")  # in two again, not three
    assert other.is_connected("/b")


def test_in_process_unknown_acks_and_reserved_names() -> None:
    app = _app()
    socketio = SocketIO(app)
    disconnects: list[Any] = []
    socketio.on("disconnect")(lambda reason=None: disconnects.append(reason))
    client = socketio.test_client(app)
    server = socketio.server
    for ack in ("30[]", "37[]", "3/nowhere,1[]", "35[1]"):
        server.handle_eio_message(client.eio_sid, ack)
    assert server.counters["unknown_acks"] == 4
    assert server.counters["malformed_packets"] == 0
    for name in sorted(RESERVED_EVENTS):
        server.handle_eio_message(client.eio_sid, f'2["{name}","forged"]')
    assert server.counters["malformed_packets"] == len(RESERVED_EVENTS)
    assert disconnects == [] and client.is_connected()
