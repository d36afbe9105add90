"""The node's Engine.IO server: restorable ids and the bounded transport.

:class:`ClusterEngineServer` is python-engineio's server with:

- ``restore_next_id`` (of :class:`cluster.compat.EngineServerSeam`):
  connection state recovery sets the previous sid right before the connect
  so the recovered connection keeps it;
- under eventlet, the node's websocket transport
  (:class:`~.websocket_transport.ClusterSocket`: frames written directly and
  coalesced, pings on timers) for every new connection;
- ``max_backlog``: bytes a client may leave unread before it is
  disconnected (default 1 MiB), counted in ``slow_consumers``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cluster import compat
from cluster.exceptions import ConfigurationError
from cluster.node.frame_writer import DEFAULT_MAX_BACKLOG
from cluster.node.websocket_transport import FLUSHER, ClusterSocket

logger = logging.getLogger("cluster.transport")


class ClusterEngineServer(compat.EngineServerSeam):
    """python-engineio's ``Server`` as a node runs it (see the module doc).

    :param max_backlog: unread bytes per client before it is disconnected;
        ``None`` keeps the default (1 MiB).
    """

    def __init__(self, *args: Any, max_backlog: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_backlog = DEFAULT_MAX_BACKLOG
        if max_backlog is not None:
            self.set_max_backlog(max_backlog)
        #: shared with the Socket.IO server's counters (see ClusterServer)
        self.counters: dict[str, int] = {"slow_consumers": 0}
        self._last_backlog_log = 0.0

    def set_max_backlog(self, max_backlog: int) -> None:
        """Bytes a client may leave unread; applies to sockets opened later."""
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) \
                or max_backlog < 1024:
            raise ConfigurationError(
                f"max_backlog must be a whole number of bytes, at least 1024 (got "
                f"{max_backlog!r}); e.g. max_backlog=4 * 1024 * 1024 for 4 MiB.")
        self.max_backlog = max_backlog

    def socket_created(self, eio_socket: Any) -> None:
        if self.async_mode == "eventlet":
            compat.adopt_socket(eio_socket, ClusterSocket)

    def backlog_exceeded(self, sid: str, backlog: int) -> None:
        """A client left more than ``max_backlog`` bytes unread: it was cut."""
        self.counters["slow_consumers"] = self.counters.get("slow_consumers", 0) + 1
        now = time.monotonic()
        if now - self._last_backlog_log > 5:  # a flood of them logs one line per 5 s
            self._last_backlog_log = now
            logger.warning(
                "Connection %s disconnected: %d bytes unread exceed max_backlog=%d "
                "(%d slow consumer(s) so far). A client that stops reading is cut "
                "so it cannot grow the node's memory; raise --max-backlog if "
                "legitimate clients lag this far.", sid[:8], backlog, self.max_backlog,
                self.counters["slow_consumers"])

    def unread_bytes(self, sid: str) -> int:
        """Bytes client ``sid`` has not taken yet (0 when unknown or gone)."""
        socket = compat.engine_socket(self, sid)
        return int(getattr(socket, "unread_bytes", 0)) if socket is not None else 0

    def transport_stats(self) -> dict[str, int]:
        """Websocket writes and the frames they carried (coalescing ratio)."""
        return dict(FLUSHER.counters)
