"""Switching session forwarding on for a node (:mod:`.forwarding`).

:func:`install_forwarding` wires the parts together when the node starts
serving: the sid minter into the Engine.IO server, the node's address into
its heartbeats and its own registry entry, the middleware in front of the
application. :func:`default_advertise_url` is the address a node advertises
when ``--advertise-url`` is not given.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from cluster.node.forwarding import SessionForwarding
from cluster.node.sid_owner import SidMinter

__all__ = ["default_advertise_url", "install_forwarding"]

logger = logging.getLogger("cluster.forwarding")


def default_advertise_url(host: str, port: int) -> str:
    """``http://<bind host>:<port>``; for a wildcard bind (``0.0.0.0``,
    ``::``) the address this host's name resolves to (in a container or a
    pod, its own IP, which the other nodes can reach)."""
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def install_forwarding(socketio: Any, wsgi_app: Callable[..., Iterable[bytes]],
                       advertise_url: str) -> Callable[..., Iterable[bytes]]:
    """Wrap ``wsgi_app`` in :class:`SessionForwarding` for the node of
    ``socketio``, mint its sids with its tag and advertise ``advertise_url``
    in its heartbeats. Returns ``wsgi_app`` unchanged (and logs why) when
    the node has no cluster bus or the bus is unsigned: the forwarding
    header and the sid MAC are keyed from the bus signing secret.
    """
    server = socketio.server
    manager = server.manager
    secret = socketio.config.bus.signing_secret if socketio.config is not None else None
    nodes = getattr(manager, "nodes", None)
    heartbeat = getattr(manager, "heartbeat", None)
    if nodes is None or heartbeat is None or getattr(manager, "write_only", False):
        return wsgi_app
    if not secret:
        logger.warning("Session forwarding is off: it needs the bus signing secret "
                       "(--signing-secret); without it the balancer must keep each "
                       "polling session on one node (sticky sessions).")
        return wsgi_app
    eio = server.eio
    minter = SidMinter(manager.host_id, secret)
    eio.sid_minter = minter
    heartbeat.url = advertise_url
    nodes.set_own_url(advertise_url)
    green = eio.runtime
    poll_timeout = float(eio.ping_interval) + float(eio.ping_timeout) + 10.0
    logger.info("Session forwarding on: this node is %s (sid tag %s)", advertise_url,
                minter.tag)
    return SessionForwarding(
        wsgi_app, socketio.server.config.transport.path, minter=minter,
        lookup=nodes.url_for_tag, secret=secret,
        max_body=lambda: int(eio.max_http_buffer_size), poll_timeout=poll_timeout,
        counters=server.counters, spawn=green.spawn, event=green.event)
