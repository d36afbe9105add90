"""The node's listening sockets (``listen`` of each runtime's server)."""

from __future__ import annotations

import errno
import importlib
import socket

import pytest

from cluster import runtime
from cluster.devtools.processes import free_port
from tests.harness.runtimes import require_runtime


@pytest.mark.parametrize("mode", runtime.MODES)
def test_a_second_listener_on_a_served_port_is_refused(mode: str) -> None:
    # eventlet.listen sets SO_REUSEPORT on a given port by default: a second
    # node started on the port of a running one bound it too, and the kernel
    # split the connections between the two without an error
    require_runtime(mode)
    server = importlib.import_module(f"cluster.runtime.{mode}_server")
    port = free_port()  # a given port: eventlet adds SO_REUSEPORT only then
    first = server.listen("127.0.0.1", port)
    try:
        assert not first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with pytest.raises(OSError) as refused:
            server.listen("127.0.0.1", port)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        first.close()
