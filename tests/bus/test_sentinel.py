"""redis+sentinel:// URLs: the master is found through Sentinel."""
from __future__ import annotations

import socketio

from cluster.bus import create_manager
from tests.bus.loopback import wait_for


def test_sentinel_url_delivers(sentinel, redis_url) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/0/busmaster"
    receiver = create_manager(url, heartbeat_interval=0.2)
    server = socketio.Server(client_manager=receiver, async_mode="threading")
    got = []
    server._send_eio_packet = lambda eio, pkt: got.append(pkt.data)
    receiver.initialize()
    try:
        sid = receiver.connect("e1", "/")
        wait_for(lambda: receiver.ready)
        create_manager(url, write_only=True).emit("hi", "via-sentinel", room=sid)
        wait_for(lambda: got == ['2["hi","via-sentinel"]'])
    finally:
        receiver.close()
