"""Websockets read in turns, without a green thread each (cluster.node.websocket_reads),
on real node processes: a peer found dead by its missing pong, messages in
order across read turns, and the node's gauges of detached websockets."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from cluster.node.websocket_reads import DEFAULT_READ_TURNS, RECVS_PER_TURN
from tests.harness.raw_websocket import RawWebSocket, masked_text_frame
from tests.harness.waiting import wait_for

FAULT_APP = "tests.faults.fault_app:socketio"


def _gauge(node: Any, name: str, kind: str | None = None) -> float:
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    prefix = f'{name}{{kind="{kind}"}} ' if kind else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"{prefix!r} not in /metrics")


def _answer_pings(client: RawWebSocket, seconds: float) -> None:
    """Read (and so answer every ping) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.sock.settimeout(0.2)
        try:
            client.read()
        except TimeoutError:
            pass
    client.sock.settimeout(10)


def _connected(node: Any, name: str) -> RawWebSocket:
    client = RawWebSocket(node)
    client.send("40" + json.dumps({"name": name}))
    client.read_until("40")
    return client


def test_a_peer_that_stops_answering_pings_is_closed_by_its_pong_deadline(
        node_factory: Any) -> None:
    # nothing reads an idle detached websocket, so no read times out: the
    # missing pong is what finds a dead peer (ping 1 s, pong within 1 s)
    (node,) = node_factory(app=FAULT_APP, env={"FAULT_PING_INTERVAL": "1",
                                               "FAULT_PING_TIMEOUT": "1"})
    silent = _connected(node, "silent")  # never reads again: no pongs
    answering = _connected(node, "answering")
    wait_for(lambda: _gauge(node, "socketio_websocket_reads", "detached") == 2,
             what="both websockets read in turns")
    # one ping interval, the pong timeout and its grace (2.5 s), then the
    # close; without the deadline nothing would ever close it
    wait_for(lambda: _gauge(node, "socketio_connections") == 1, timeout=15,
             what="the silent peer closed")
    assert silent.closed_within(5)
    # the client that answers its pings (read() does) is still served
    _answer_pings(answering, 3)
    answering.send('421["whoami"]')
    assert json.loads(answering.read_until("431")[3:])[0]["name"] == "answering"
    assert _gauge(node, "socketio_websocket_reads", "detached") == 1
    answering.close()
    wait_for(lambda: _gauge(node, "socketio_websocket_reads", "detached") == 0,
             what="the closed websocket's reading ended")
    # the disconnect is handled after the reading ends (in a handler's green
    # thread), so the connection count follows a moment later
    wait_for(lambda: _gauge(node, "socketio_connections") == 0,
             what="the closed websocket's connection released")


def test_a_connect_that_outlasts_the_pong_deadline_keeps_a_client_that_answered(
        node_factory: Any) -> None:
    # nothing of a connection is read while its CONNECT is handled (it may
    # wait for admission behind a reconnect storm's): its pong waits unread,
    # which must not count as a missing pong (ping 1 s, pong within 1 s)
    (node,) = node_factory(app=FAULT_APP, env={"FAULT_PING_INTERVAL": "1",
                                               "FAULT_PING_TIMEOUT": "1"})
    client = RawWebSocket(node)
    # the connect handler takes 4 s: past the first pong's deadline (2.5 s)
    client.send("40" + json.dumps({"name": "patient", "hold": 4}))
    connected = client.read_until("40")  # read() answers the pings meanwhile
    assert connected.startswith("40{")
    # still served, and still watched: its pongs are read again
    _answer_pings(client, 3)
    client.send('421["whoami"]')
    assert json.loads(client.read_until("431")[3:])[0]["name"] == "patient"
    client.close()


def test_messages_keep_their_order_across_read_turns(node_factory: Any) -> None:
    # more than one read turn's worth of frames in one write: the turn
    # yields to the next connection in line and resumes where it stopped
    (node,) = node_factory(app=FAULT_APP, extra_args=["--max-events-per-second", "0"])
    sender = _connected(node, "sender")
    sender.send('421["join","r"]')
    sender.read_until("431")
    # what comes back (~560 KiB) stays within the default max_backlog even
    # if the kernel buffers none of it while this client is still writing
    padding = "x" * 500
    count = RECVS_PER_TURN * 128  # past one turn of 64 KiB reads
    burst = b"".join(
        masked_text_frame(f'42["say",{{"room":"r","sender":"{padding}","seq":{seq}}}]')
        for seq in range(count))
    assert len(burst) > RECVS_PER_TURN * 65536
    sender.sock.sendall(burst)
    seen = []
    while len(seen) < count:
        text = sender.read_until('42["msg"')
        seen.append(json.loads(text[2:])[1]["seq"])
    assert seen == list(range(count))
    sender.close()


def test_handlers_of_a_detached_websocket_still_see_its_request(
        node_factory: Any, sio_client_factory: Any) -> None:
    # the environ lets go of the server's request objects when the
    # websocket detaches; what Flask's request shows of it stays
    (node,) = node_factory(message_queue=None)
    client = sio_client_factory()
    client.connect(node.url, transports=["websocket"], headers={"User-Agent": "reads-test/1"},
                   wait_timeout=10)
    assert _gauge(node, "socketio_websocket_reads", "detached") == 1
    context = client.call("context", timeout=10)["result"]
    assert context["user_agent"] == "reads-test/1"
    assert context["path"] == "/socket.io/"
    assert context["sid"] == client.get_sid()


def test_messages_right_behind_the_upgrade_packet_are_handled(node_factory: Any) -> None:
    # a client sends its first messages right behind the UPGRADE packet, in
    # the same segment when a forwarding node splices the websocket: the
    # upgrade's reads take them in with it, and the first read turn must
    # handle them although the kernel then has nothing more to read (else
    # they wait for the client's next bytes: its pong, pings 30 s apart here)
    (node,) = node_factory(app=FAULT_APP, env={"FAULT_PING_INTERVAL": "30"})
    opened = requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling", timeout=5).text
    sid = json.loads(opened[opened.index("{"):])["sid"]
    client = RawWebSocket(node, sid=sid)
    client.sock.settimeout(5)
    client.send("2probe")
    client.read_until("3probe")
    client.sock.sendall(masked_text_frame("5") + masked_text_frame(
        "40" + json.dumps({"name": "eager"})))
    assert client.read_until("40").startswith("40{")
    client.send('421["whoami"]')
    assert json.loads(client.read_until("431")[3:])[0]["name"] == "eager"
    client.close()


def test_websockets_stay_on_their_green_thread_when_detaching_is_off(
        node_factory: Any, sio_client_factory: Any) -> None:
    # CLUSTER_DETACHED_WEBSOCKETS=0: the read loop of the upgrade's green
    # thread serves the connection, as before detaching existed
    (node,) = node_factory(message_queue=None, env={"CLUSTER_DETACHED_WEBSOCKETS": "0"})
    client = sio_client_factory()
    client.connect(node.url, transports=["websocket"], wait_timeout=10)
    assert client.call("context", timeout=10)["result"]["sid"] == client.get_sid()
    assert _gauge(node, "socketio_websocket_reads", "detached") == 0
    assert _gauge(node, "socketio_connections") == 1


def test_connects_waiting_for_admission_leave_the_read_turns_to_connected_clients(
        node_factory: Any) -> None:
    # a reconnect storm in small: more CONNECTs wait for the one admission
    # slot than there are read turns. Handled in turns, they held every one
    # and the connected client's event waited behind them all
    (node,) = node_factory(extra_args=["--max-concurrent-connects", "1",
                                       "--connect-timeout", "60"])
    connected = RawWebSocket(node)
    connected.connect_and_join("before")
    holder = RawWebSocket(node)  # takes the only slot while its handler lingers
    holder.send("40" + json.dumps({"linger": 20}))
    wait_for(lambda: requests.get(f"{node.url}/connects-running", timeout=5).json()["now"] == 1,
             what="the lingering CONNECT holding the slot")
    waiting = []
    try:
        for _ in range(DEFAULT_READ_TURNS + 8):
            client = RawWebSocket(node)
            client.send("40")
            waiting.append(client)
        wait_for(lambda: _gauge(node, "socketio_connects_waiting") == len(waiting),
                 timeout=30, what="every CONNECT waiting for the slot")
        connected.send('421["join","during"]')
        assert "during" in json.loads(connected.read_until("431")[3:])[0]["rooms"]
        # answered while the slot is still held: nothing waited for it
        assert requests.get(f"{node.url}/connects-running", timeout=5).json()["now"] == 1
    finally:
        for client in waiting:
            client.close()
        holder.close()
        connected.close()


def test_a_client_gone_while_its_connect_waited_leaves_nothing_behind(
        node_factory: Any) -> None:
    # its reading is paused while the CONNECT waits apart: the close is
    # seen once the CONNECT is done, and the connection is released
    (node,) = node_factory(extra_args=["--max-concurrent-connects", "1",
                                       "--connect-timeout", "60"])
    holder = RawWebSocket(node)
    holder.send("40" + json.dumps({"linger": 2}))
    wait_for(lambda: requests.get(f"{node.url}/connects-running", timeout=5).json()["now"] == 1,
             what="the lingering CONNECT holding the slot")
    gone = RawWebSocket(node)
    gone.send("40")
    wait_for(lambda: _gauge(node, "socketio_connects_waiting") == 1,
             what="the second CONNECT waiting for the slot")
    gone.close()
    holder.read_until("40")  # the slot is given back: the waiting CONNECT runs
    wait_for(lambda: _gauge(node, "socketio_connections") == 1,
             what="the gone client's connection released")
    assert _gauge(node, "socketio_websocket_reads", "detached") == 1
    holder.send('421["join","still"]')
    assert "still" in json.loads(holder.read_until("431")[3:])[0]["rooms"]
    holder.close()
