"""Server-to-client websocket frames and the frame writer, on real sockets."""

from __future__ import annotations

import socket
import struct

from engineio import packet as eio_packet

from cluster import runtime
from cluster.node.frame_writer import FrameWriter
from cluster.node.frames import OPCODE_BINARY, OPCODE_TEXT, close_frame, frame, frame_of


def test_frame_lengths_follow_rfc6455() -> None:
    assert frame(b"hi") == b"\x81\x02hi"
    medium = frame(b"x" * 300)
    assert medium[:4] == b"\x81\x7e" + struct.pack("!H", 300)
    large = frame(b"x" * 70_000, OPCODE_BINARY)
    assert large[:2] == b"\x82\x7f" and struct.unpack("!Q", large[2:10])[0] == 70_000
    assert close_frame() == b"\x88\x02\x03\xe8"


def test_a_packet_is_framed_once_for_all_recipients() -> None:
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["chat","hé"]')
    first = frame_of(pkt)
    assert first == frame('42["chat","hé"]'.encode(), OPCODE_TEXT)
    assert frame_of(pkt) is first
    binary = eio_packet.Packet(eio_packet.MESSAGE, b"\x00\x01")
    assert frame_of(binary) == b"\x82\x02\x00\x01"


class ManualFlusher:
    runtime = runtime.load("eventlet")
    write_window = 0.0

    def __init__(self) -> None:
        self.counters = {"writes": 0, "frames": 0}
        self.scheduled: list[FrameWriter] = []

    def schedule(self, writer: FrameWriter) -> None:
        self.scheduled.append(writer)


def test_pending_frames_leave_in_one_send() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    flusher = ManualFlusher()
    writer = FrameWriter(left, flusher)  # type: ignore[arg-type]
    for n in range(8):
        writer.write(frame(b"m%d" % n))
    assert flusher.scheduled == [writer]  # one flush asked for, not eight
    writer.flush()
    assert flusher.counters == {"writes": 1, "frames": 8}
    assert right.recv(1024) == b"".join(frame(b"m%d" % n) for n in range(8))
    left.close()
    right.close()


def test_a_reader_that_stops_is_cut_past_the_backlog() -> None:
    import eventlet

    left, right = socket.socketpair()
    left.setblocking(False)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    overflowed: list[int] = []
    writer = FrameWriter(left, ManualFlusher(), max_backlog=32 * 1024,  # type: ignore[arg-type]
                         on_overflow=overflowed.append)
    chunk = frame(b"x" * 1000)
    for _ in range(2000):  # 2 MB, never read
        writer.write(chunk)
        if writer.closed:
            break
        writer.flush()
    assert writer.closed and writer.backlog == 0
    eventlet.sleep(0)  # the overflow callback runs in a green thread of its own
    assert overflowed and overflowed[0] > 32 * 1024
    right.setblocking(False)
    received = b""
    try:
        while chunk_read := right.recv(65536):
            received += chunk_read
    except BlockingIOError:
        pass
    assert len(received) < 2000 * len(chunk)
    right.close()
    left.close()
