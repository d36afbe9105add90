"""A python-socketio client that resumes its session on reconnect.

:class:`Client` behaves like the official JavaScript client does with
connection state recovery: it keeps the ``pid`` the server sends in the
CONNECT reply and the last offset it received, and sends both in the CONNECT
payload (merged with your ``auth``) whenever it reconnects. The server then
resumes the connection's forked session and rooms, on whichever node the
load balancer picks, and (with recovery enabled) replays missed packets.
The bookkeeping is :class:`cluster.recovery.client_state.ResumeState`.
"""

from __future__ import annotations

from typing import Any

from cluster import compat
from cluster.recovery.client_state import ResumeState, has_offset_marker

__all__ = ["Client", "has_offset_marker"]


class Client(compat.ClientSeam):
    """``socketio.Client`` plus session resume (``pid``/``offset``).

    All constructor and ``connect()`` arguments are python-socketio's, plus
    ``ordered_events`` (default ``False``, python-socketio's behaviour: each
    event's handler runs in a thread of its own, so two events arriving
    together may be handled in either order). With ``True`` handlers run one
    at a time, in arrival order, in the client's receive thread, as the
    JavaScript client runs them: use it when the order of what a room
    receives matters to you. Such a handler must return quickly and must not
    wait for the server (``call()``): the answer would queue behind it.
    ``auth`` may be a dict or a callable returning one, as there; the resume
    fields are added to it on every (re)connect.

    Attributes (per namespace, ``"/"`` by default):

    - ``pid(namespace)``: the resume id the server issued, or ``None``;
    - ``offset(namespace)``: the offset of the last packet received;
    - ``recovered``: after a reconnect, ``True`` when the server restored the
      previous connection (same sid) for the default namespace.
    """

    def __init__(self, *args: Any, ordered_events: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, ordered_events=ordered_events, **kwargs)
        self.resume_state = ResumeState()
        #: how long a reconnect waits for the server's CONNECT reply: the
        #: ``wait_timeout`` last given to :meth:`connect` (python-socketio
        #: reconnects with its default of 1 s, and a resume that takes longer
        #: on a busy node was given up, closed and claimed again)
        self.reconnect_wait_timeout: float = 1.0

    def connect(self, url: str, *args: Any, wait_timeout: float | None = None,
                **kwargs: Any) -> None:
        """python-socketio's ``connect``; a reconnect (which passes no
        ``wait_timeout``) waits as long as the last explicit one."""
        if wait_timeout is None:
            wait_timeout = self.reconnect_wait_timeout
        else:
            self.reconnect_wait_timeout = wait_timeout
        super().connect(url, *args, wait_timeout=wait_timeout, **kwargs)

    @property
    def recovered(self) -> bool:
        return self.resume_state.recovered

    def pid(self, namespace: str | None = None) -> str | None:
        """The resume id the server issued for ``namespace``."""
        return self.resume_state.pids.get(namespace or "/")

    def offset(self, namespace: str | None = None) -> str | None:
        """The offset of the last packet received on ``namespace``."""
        return self.resume_state.offsets.get(namespace or "/")

    def connect_payload(self, namespace: str, auth: Any) -> Any:
        return self.resume_state.connect_payload(namespace, auth)

    def connect_reply(self, namespace: str, data: Any) -> Any:
        return self.resume_state.connected(namespace, data)

    def event_arguments(self, namespace: str, id: Any, data: Any) -> Any:
        return self.resume_state.received(namespace, id, data)
