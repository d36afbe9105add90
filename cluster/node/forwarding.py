"""Session forwarding: long-polling works behind any balancer, no stickiness.

A session's state lives on the node that created it (its *owner*). Without
sticky sessions a balancer sends a session's later polls, and its
WebSocket upgrade, to any node. :class:`SessionForwarding`, a WSGI
middleware in front of the node's application, serves them:

- the sid names its owner (:mod:`.sid_owner`: a node tag and a MAC), and
  the owner's HTTP address comes from the live node list the heartbeats
  keep (no Redis round trip per request);
- a polling GET or POST for a sid of another live node is forwarded to it
  by a direct HTTP hop (a pooled keep-alive connection), body included,
  and the owner's response is streamed back: the client sees the same
  Engine.IO session as if it had stuck to one node;
- a WebSocket upgrade for such a sid is spliced byte for byte to the owner
  (two green threads), so the upgraded connection is served by the owner
  and its state never moves;
- a sid with a bad MAC, or whose owner is not in the node list (gone,
  stale), is handed to python-engineio here, which answers ``400 Invalid
  session`` as a single node does: no hop.

Why a direct hop rather than the bus: a long-poll GET waits up to
``ping_interval`` (25 s) for data, and its answer must go back on the same
HTTP exchange; over the bus each poll would be two published messages and
a waiting request table on both ends, and every packet of a busy session
would cross Redis twice. The direct hop costs one extra local HTTP request
(measured in ``benchmarks/forwarding.py``, figures in the README).

Bounds and authority:

- a forwarded request carries the header :data:`FORWARDED_HEADER`, signed
  with a key derived from the bus signing secret over the method, the
  target, a timestamp and the client's address. The owner restores the
  client's address from it (a forward adds no authority: the application
  sees the client, not the forwarding node), and refuses a header that
  does not verify (``403``): a client cannot forge one;
- a request that was already forwarded is never forwarded again: if the
  receiving node does not hold the sid either it answers ``400``;
- bodies above the node's own ``max_http_buffer_size`` get ``413`` without
  a hop; at most ``max_in_flight`` forwards (polls and spliced WebSockets
  together, default 10,000) run at once, more get ``503``; a hop has a
  connect timeout (2 s) and a read timeout of one long-poll plus a margin.

Counted in the node's metrics (``socketio_server_events``):
``forwarded_polls``, ``forwarded_upgrades``, ``forward_refused``
(already forwarded), ``forged_forward_headers``, ``forward_failures``
(owner unreachable), ``forward_overloaded``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cluster.node.sid_owner import SidMinter, derive_key
from cluster.runtime import UPGRADE_SOCKET

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FORWARDED_HEADER", "ForwardSigner", "SessionForwarding"]

logger = logging.getLogger("cluster.forwarding")

#: the header that marks (and signs) a forwarded request
FORWARDED_HEADER = "X-Cluster-Forwarded"
_ENVIRON_KEY = "HTTP_X_CLUSTER_FORWARDED"
#: forwards (polls and spliced websockets) running at once, per node
DEFAULT_MAX_IN_FLIGHT = 10_000
#: seconds a forwarded header stays valid (clock skew between nodes included)
MAX_HEADER_AGE = 60.0
CONNECT_TIMEOUT = 2.0
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
               "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
_INVALID_SESSION = b'"Invalid session"'


class ForwardSigner:
    """Signs and checks :data:`FORWARDED_HEADER` (HMAC-SHA256, key derived
    from the bus signing secret)."""

    def __init__(self, secret: str | bytes) -> None:
        self._key = derive_key(secret, "forward")

    def _mac(self, method: str, target: str, origin: str, stamp: str, remote: str) -> str:
        text = "\n".join((method, target, origin, stamp, remote))
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, origin: str, remote: str) -> str:
        """The header value for a request forwarded by node ``origin``."""
        stamp = f"{time.time():.3f}"
        return ";".join(("v1", origin, stamp, remote,
                         self._mac(method, target, origin, stamp, remote)))

    def verify(self, value: str, method: str, target: str) -> str | None:
        """The client's address the header carries, or None when it does
        not verify (forged, altered, for another request, or too old)."""
        parts = value.split(";")
        if len(parts) != 5 or parts[0] != "v1":
            return None
        _, origin, stamp, remote, mac = parts
        try:
            age = abs(time.time() - float(stamp))
        except ValueError:
            return None
        if age > MAX_HEADER_AGE:
            return None
        if not hmac.compare_digest(mac, self._mac(method, target, origin, stamp, remote)):
            return None
        return remote


def _target(environ: dict[str, Any]) -> str:
    query = environ.get("QUERY_STRING", "")
    path = environ.get("PATH_INFO", "") or "/"
    return f"{path}?{query}" if query else path


def _request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_") and key != _ENVIRON_KEY:
            name = key[5:].replace("_", "-").title()
            if name.lower() not in _HOP_BY_HOP or name.lower() == "upgrade":
                headers.append((name, value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    return headers


class _Pool:
    """Idle keep-alive connections to one owner node."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[http.client.HTTPConnection] = []

    def take(self) -> http.client.HTTPConnection:
        if self.idle:
            return self.idle.pop()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        if len(self.idle) < 64:
            self.idle.append(conn)
        else:
            conn.close()


class SessionForwarding:
    """The WSGI middleware of this module (see the module doc).

    :param wsgi_app: the node's application.
    :param socketio_path: the Engine.IO path (``socket.io``).
    :param minter: this node's sid minter (its tag, and the MAC check).
    :param lookup: ``tag -> (host_id, url) | None``: the live node list.
    :param secret: the bus signing secret (the forwarding header's key).
    :param max_body: the node's ``max_http_buffer_size`` (asked per request).
    :param poll_timeout: read timeout of a forwarded poll (one long-poll,
        ``ping_interval + ping_timeout``, plus a margin).
    :param counters: the node's event counters.
    :param spawn: starts a green thread (the splice's second direction).
    :param event: makes a green event.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], socketio_path: str, *,
                 minter: SidMinter, lookup: Callable[[str], tuple[str, str | None] | None],
                 secret: str | bytes, max_body: Callable[[], int], poll_timeout: float,
                 counters: dict[str, int], spawn: Callable[..., Any], event: Callable[[], Any],
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self.wsgi_app = wsgi_app
        self.socketio_path = "/" + socketio_path.strip("/")
        self.minter = minter
        self.lookup = lookup
        self.signer = ForwardSigner(secret)
        self.max_body = max_body
        self.poll_timeout = poll_timeout
        self.counters = counters
        self.spawn = spawn
        self.event = event
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._pools: dict[str, _Pool] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not (path == self.socketio_path or path.startswith(self.socketio_path + "/")):
            return self.wsgi_app(environ, start_response)
        header = environ.pop(_ENVIRON_KEY, None)
        forwarded = False
        if header is not None:
            remote = self.signer.verify(header, environ.get("REQUEST_METHOD", ""),
                                        _target(environ))
            if remote is None:
                self._count("forged_forward_headers")
                return _answer(start_response, "403 Forbidden",
                               b"forwarding header does not verify\n")
            environ["REMOTE_ADDR"] = remote  # the client's, not the forwarding node's
            forwarded = True
        sid = (parse_qs(environ.get("QUERY_STRING", "")).get("sid") or [""])[0]
        tag = self.minter.owner_tag(sid) if sid else None
        if tag is None or tag == self.minter.tag:
            # ours, or not minted in this cluster: python-engineio serves or refuses it
            return self.wsgi_app(environ, start_response)
        if forwarded:  # never a second hop
            self._count("forward_refused")
            return _invalid_session(start_response)
        owner = self.lookup(tag)
        if owner is None or owner[1] is None:  # stale: the owner is gone
            return _invalid_session(start_response)
        if self.in_flight >= self.max_in_flight:
            self._count("forward_overloaded")
            return _answer(start_response, "503 Service Unavailable",
                           b"too many forwarded requests\n", [("Retry-After", "1")])
        if environ.get(UPGRADE_SOCKET) is not None and \
                environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return self._splice(environ, start_response, owner[1])
        return self._forward_poll(environ, start_response, owner[1])

    # -- polling -----------------------------------------------------------------
    def _pool(self, url: str) -> _Pool:
        pool = self._pools.get(url)
        if pool is None:
            if len(self._pools) >= 256:  # nodes come and go (new pod IPs): forget old ones
                for old in self._pools.values():
                    for conn in old.idle:
                        conn.close()
                self._pools.clear()
            parts = urlsplit(url)
            pool = self._pools[url] = _Pool(parts.hostname or "127.0.0.1",
                                            parts.port or 80, self.poll_timeout)
        return pool

    def _forward_poll(self, environ: dict[str, Any], start_response: Callable[..., Any],
                      url: str) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        body = b""
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > self.max_body():
                return _answer(start_response, "413 Payload Too Large",
                               b"request body too large\n")
            body = environ["wsgi.input"].read(length) if length > 0 else b""
        target = _target(environ)
        headers = dict(_request_headers(environ))
        headers[FORWARDED_HEADER] = self.signer.sign(
            method, target, self.minter.tag, environ.get("REMOTE_ADDR", ""))
        headers["Content-Length"] = str(len(body))
        pool = self._pool(url)
        self.in_flight += 1
        try:
            conn = response = None
            for attempt in (0, 1):  # a pooled connection the owner closed: one retry
                try:
                    conn = pool.take()
                    conn.request(method, target, body=body, headers=headers)
                    response = conn.getresponse()
                    break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if attempt:
                        raise
            if conn is None or response is None:
                raise http.client.HTTPException("no response")
        except (OSError, http.client.HTTPException) as exc:
            self.in_flight -= 1
            self._count("forward_failures")
            logger.debug("forward to %s failed: %s", url, exc)
            return _invalid_session(start_response)
        self._count("forwarded_polls")
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        start_response(f"{response.status} {response.reason}", out)
        return self._stream(pool, conn, response)

    def _stream(self, pool: _Pool, conn: Any, response: Any) -> Iterator[bytes]:
        done = False
        try:
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                yield chunk
            done = True
        finally:
            self.in_flight -= 1
            if done and not response.will_close:
                pool.give_back(conn)
            else:
                conn.close()

    # -- websocket -----------------------------------------------------------------
    def _splice(self, environ: dict[str, Any], start_response: Callable[..., Any],
                url: str) -> Iterable[bytes]:
        parts = urlsplit(url)
        target = _target(environ)
        try:
            upstream = socket.create_connection((parts.hostname or "127.0.0.1",
                                                 parts.port or 80), timeout=CONNECT_TIMEOUT)
        except OSError:
            self._count("forward_failures")
            return _invalid_session(start_response)
        lines = [f"GET {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in _request_headers(environ)]
        lines += ["Connection: Upgrade", f"{FORWARDED_HEADER}: " + self.signer.sign(
            "GET", target, self.minter.tag, environ.get("REMOTE_ADDR", ""))]
        client = environ[UPGRADE_SOCKET]()
        self._count("forwarded_upgrades")
        self.in_flight += 1
        # traffic crosses every ping_interval both ways; the owner closes a
        # silent client, which ends the splice
        upstream.settimeout(self.poll_timeout)
        client.settimeout(self.poll_timeout)
        try:
            upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            finished = self.event()
            self.spawn(_pump, upstream, client, finished)
            _pump(client, upstream, None)
            finished.wait(timeout=5.0)
        except OSError:
            pass
        finally:
            self.in_flight -= 1
            for sock in (upstream, client):
                try:
                    sock.close()
                except OSError:
                    pass
        return []


def _pump(source: Any, sink: Any, finished: Any) -> None:
    """Copy ``source`` to ``sink`` until either ends; then end both."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if finished is not None:
            finished.set()


def _answer(start_response: Callable[..., Any], status: str, body: bytes,
            extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))] + (extra or []))
    return [body]


def _invalid_session(start_response: Callable[..., Any]) -> list[bytes]:
    """What python-engineio answers for a sid it does not hold."""
    return _answer(start_response, "400 BAD REQUEST", _INVALID_SESSION)

