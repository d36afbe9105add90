"""Telling a Redis that refuses us from a Redis that is away.

An outage is temporary: the store reports it and the node retries. A wrong
password, an ACL user without a needed permission, or a TLS certificate the
client does not trust never heal on their own, and redis-py reports them as
generic connection or response errors. :func:`access_problem` recognises
them and says what to change, so the operator reads the fix, not a
traceback. The bus (:mod:`cluster.bus.backends.redis_access`) uses it too.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import redis

__all__ = ["access_problem"]

_CA_FIX = ("pass the CA that signed the server's certificate in the URL "
           "(rediss://USER:PASSWORD@HOST:PORT/0?ssl_ca_certs=/path/to/ca.crt) or as the "
           "ssl_ca_certs option")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def access_problem(exc: BaseException) -> str | None:
    """What to fix when ``exc`` means Redis refused our credentials or we
    refused its certificate; ``None`` for anything else (e.g. an outage)."""
    for error in _chain(exc):
        text = str(error)
        upper = text.upper()
        if isinstance(error, redis.exceptions.AuthenticationError) or upper.startswith(
                ("WRONGPASS", "NOAUTH", "INVALID USERNAME-PASSWORD")):
            return (f"Redis refused the credentials ({text}): check the user and password "
                    f"in the URL (rediss://USER:PASSWORD@HOST:PORT/0) against the server's "
                    f"ACL users (ACL LIST) or requirepass.")
        if upper.startswith("NOPERM"):
            return (f"The Redis ACL user may not run a command the cluster needs ({text}): "
                    f"grant it at least '~* &* +@all -@dangerous +info' (keys, pub/sub "
                    f"channels, scripts and streams).")
        if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE VERIFY FAILED" in upper:
            if "HOSTNAME" in upper or "IP ADDRESS MISMATCH" in upper:
                return (f"The Redis server's TLS certificate does not name the host in the "
                        f"URL ({text}): connect with a host name or IP address the "
                        f"certificate lists (subjectAltName).")
            return f"The Redis server's TLS certificate is not trusted ({text}): {_CA_FIX}."
        if "WRONG VERSION NUMBER" in upper or "PACKET LENGTH TOO LONG" in upper:
            return (f"TLS and plain Redis are mixed up ({text}): use rediss:// for a TLS "
                    f"port (redis-server --tls-port) and redis:// for a plain one.")
    return None
