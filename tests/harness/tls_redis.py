"""A TLS-only ``redis-server`` with an ACL user, and the certificates it needs.

``openssl`` makes a throwaway CA and a server certificate for 127.0.0.1
(subjectAltName IP, so redis-py's hostname check passes), plus a second,
unrelated CA for the "untrusted certificate" cases. :class:`TlsRedisProcess`
runs ``redis-server --port 0 --tls-port N`` (no plaintext port at all) with
the ``default`` user switched off and one ACL user, ``app``, that may do
what the cluster needs and nothing dangerous. Ready once an AUTH + PING over
TLS answers.

========================  =========  ==============================================
fixture                   scope      gives
========================  =========  ==============================================
``tls_certificates``      session    :class:`Certificates` (``ca``, ``other_ca``,
                                     ``cert``, ``key`` paths)
``tls_redis``             session    a running :class:`TlsRedisProcess`
``tls_redis_url``         function   its ``rediss://app:...@127.0.0.1:N/0?ssl_ca_certs=``
                                     URL, the server restarted if needed and
                                     ``FLUSHALL``-ed
========================  =========  ==============================================

Stopped by PID at the end of the session; a missing ``openssl`` or a
``redis-server`` built without TLS skips the tests that use them.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.devtools.processes import (
    ExecutableNotFoundError,
    ManagedProcess,
    find_executable,
    free_port,
)

__all__ = ["ACL_USER", "Certificates", "TlsRedisProcess", "make_certificates", "tls_certificates",
           "tls_redis", "tls_redis_url"]

ACL_USER = "app"
ACL_PASSWORD = "tls-acl-password-0123456789"
# what the bus, the session store and recovery run: pub/sub, scripts, streams,
# hashes; no CONFIG, DEBUG, FLUSHALL, KEYS... (-@dangerous)
ACL_RULES = ["on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", "-@dangerous", "+info"]
#: the fixture's own user, for FLUSHALL between tests
ADMIN_USER, ADMIN_PASSWORD = "admin", "tls-admin-password-0123456789"


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA, the server's certificate and key, an unrelated CA."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 signed by it, and another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca(directory, "test-ca")
    _, other_ca = _make_ca(directory, "other-ca")
    key, csr, cert = directory / "redis.key", directory / "redis.csr", directory / "redis.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(key), "-out", str(csr), cwd=directory)
    extensions = directory / "server.ext"
    extensions.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                          "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert),
             cwd=directory)
    key.chmod(0o600)
    return Certificates(ca=ca_cert, cert=cert, key=key, other_ca=other_ca)


class TlsRedisProcess(ManagedProcess):
    """``redis-server`` on a TLS port only, with the ACL user :data:`ACL_USER`."""

    def __init__(self, certificates: Certificates, workdir: Path, port: int | None = None) -> None:
        self.executable = find_executable("redis-server", "redis-server")
        super().__init__("tls-redis", log_path=workdir / "tls-redis.log", start_timeout=10.0)
        self.certificates = certificates
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)

    def url(self, password: str = ACL_PASSWORD, ca: Path | None = None,
            user: str = ACL_USER) -> str:
        """The ``rediss://`` URL the nodes, workers and stores are given."""
        ca_path = ca or self.certificates.ca
        return f"rediss://{user}:{password}@{self.host}:{self.port}/0?ssl_ca_certs={ca_path}"

    def command(self) -> list[str]:
        certs = self.certificates
        return [
            self.executable,
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", self.host,
            "--tls-cert-file", str(certs.cert),
            "--tls-key-file", str(certs.key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no",  # server authentication; clients log in with ACLs
            "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir),
            "--user", "default", "off",
            "--user", ACL_USER, *ACL_RULES,
            "--user", ADMIN_USER, "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all",
        ]  # fmt: skip

    def _tls_socket(self) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.certificates.ca))
        raw = socket.create_connection((self.host, self.port), timeout=0.5)
        return context.wrap_socket(raw, server_hostname=self.host)

    def is_ready(self) -> bool:
        try:
            with self._tls_socket() as sock:
                sock.sendall(f"AUTH {ACL_USER} {ACL_PASSWORD}\r\nPING\r\n".encode())
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        return False
                    reply += chunk
                return reply == b"+OK\r\n+PONG\r\n"
        except (OSError, ssl.SSLError):
            return False

    def client(self, admin: bool = False, **kwargs: Any) -> Any:
        """A redis-py client over TLS, as the ACL user (or the fixture's admin)."""
        import redis

        url = self.url(ADMIN_PASSWORD, user=ADMIN_USER) if admin else self.url()
        return redis.Redis.from_url(url, **kwargs)


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_redis(tls_certificates: Certificates,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedisProcess]:
    try:
        server = TlsRedisProcess(tls_certificates, tmp_path_factory.mktemp("tls-redis"))
    except ExecutableNotFoundError as exc:
        pytest.skip(f"{exc} (apt-get install redis-server)")
    try:
        server.start()
    except Exception:
        if "tls" in server.log_text().lower() and "bad directive" in server.log_text().lower():
            pytest.skip("this redis-server was built without TLS support")
        raise
    yield server
    server.stop()


@pytest.fixture
def tls_redis_url(tls_redis: TlsRedisProcess) -> str:
    if not tls_redis.is_running():
        tls_redis.start()
    client = tls_redis.client(admin=True, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return tls_redis.url()
