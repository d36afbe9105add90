"""Start-up checks of the node runner: mistakes that must stop a node at once.

A node started on a port in use, or with a bus URL no backend understands,
would otherwise fail late (a raw ``OSError`` traceback after the app's slow
import) or never (a kombu connection retried forever for ``foo://``). Each
check raises :class:`~cluster.exceptions.ConfigurationError` with the fix;
the runner prints it and exits with status 2.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlparse

from cluster.exceptions import ConfigurationError

__all__ = ["check_bus_url", "check_port_free", "listen_error"]

# the Redis schemes of cluster.bus (kept in step by tests/runner/test_start_checks.py)
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
                  "redis+cluster", "rediss+cluster")


def listen_error(exc: OSError, host: str, port: int) -> str | None:
    """The message for a failed ``bind``/``listen`` on ``host:port``, None if not one."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use by another process; stop it "
                f"or pass another --port")
    if exc.errno == errno.EACCES:
        return (f"no permission to listen on port {port} on {host}; ports below 1024 need "
                f"root, pass --port 1024 or higher")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return f"cannot listen on {host}: no such local address; pass --host 127.0.0.1 or 0.0.0.0"
    return None


def check_port_free(host: str, port: int) -> None:
    """Raise when nothing could listen on ``host:port`` (in use, forbidden...).

    Binds with ``SO_REUSEADDR``, as the node's listener does, so a port whose
    last connections are in ``TIME_WAIT`` counts as free.
    """
    if not 0 < port < 65536:
        raise ConfigurationError(f"--port {port}: a TCP port is between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"--host {host!r} does not resolve ({exc}); pass an address such as 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            message = listen_error(exc, host, port)
            if message is None:
                raise
            raise ConfigurationError(message) from None


def check_bus_url(url: str) -> None:
    """Raise unless ``url``'s scheme names a Redis or an installed kombu transport."""
    if "://" not in url:
        raise ConfigurationError(
            f"--message-queue {url!r} is not a URL: expected e.g. redis://127.0.0.1:6379/0 "
            "or amqp://guest:guest@127.0.0.1:5672//")
    scheme = urlparse(url).scheme.lower()
    if scheme in _REDIS_SCHEMES:
        return
    transport = scheme.removeprefix("kombu+")
    try:
        from kombu.transport import resolve_transport

        resolve_transport(transport)
    except KeyError:
        raise ConfigurationError(
            f"--message-queue {url!r}: unknown scheme {scheme!r}. Use one of "
            f"{', '.join(s + '://' for s in _REDIS_SCHEMES)}, or a kombu transport such "
            "as amqp://") from None
    except ImportError as exc:
        raise ConfigurationError(
            f"--message-queue {url!r}: kombu's {transport!r} transport needs a package "
            f"that is not installed ({exc}); pip install it, or use redis:// or amqp://"
        ) from None
