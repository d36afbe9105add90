"""HAProxy as a child process of the local cluster, and its stats page."""

from __future__ import annotations

import csv
import http.client
import io
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster.devtools.haproxy_config import Backend, render_haproxy_config
from cluster.devtools.processes import (
    ClusterProcessError,
    ManagedProcess,
    ProcessStartError,
    find_executable,
    free_port,
    port_accepts,
)

__all__ = ["HAProxyProcess"]


class HAProxyProcess(ManagedProcess):
    """HAProxy in front of ``backends``, from :func:`render_haproxy_config`.

    ``backends`` are :class:`~cluster.devtools.haproxy_config.Backend` objects,
    ``(name, host, port)`` tuples, or anything with ``name``, ``host`` and
    ``port`` attributes (a :class:`NodeProcess`). ``port=None`` picks a free
    port. ``stats=True`` (the default) also serves HAProxy's stats page on
    another free port, which :meth:`server_states` reads. ``config`` passes
    further keywords to :func:`render_haproxy_config` (``check_interval``,
    ``tunnel_timeout``...). The config is checked with ``haproxy -c`` before
    starting so a mistake is reported with HAProxy's own message. Runs in the
    foreground (``-db``); ready once its port accepts connections.
    """

    def __init__(
        self,
        backends: Sequence[Any],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        executable: str | None = None,
        stats: bool = True,
        start_timeout: float = 10.0,
        name: str = "haproxy",
        **config: Any,
    ) -> None:
        self.executable = executable or find_executable("haproxy", "haproxy")
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cluster-haproxy-"))
        )
        super().__init__(name, log_path=self.workdir / f"{name}.log", start_timeout=start_timeout)
        self.host = host
        self.port = port or free_port(host)
        self.stats_port = free_port(host) if stats else None
        self.backends = [
            b if isinstance(b, (Backend, tuple)) else Backend(b.name, b.host, b.port)
            for b in backends
        ]
        self.config_path = self.workdir / f"{name}.cfg"
        self.config_text = render_haproxy_config(
            self.backends, self.port, bind_host=host, stats_port=self.stats_port, **config
        )

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [self.executable, "-f", str(self.config_path), "-db"]

    def spawn(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        check = subprocess.run(
            [self.executable, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if check.returncode != 0:
            raise ProcessStartError(
                f"haproxy rejected {self.config_path}:\n{check.stdout}{check.stderr}"
            )
        super().spawn()

    def is_ready(self) -> bool:
        return port_accepts(self.host, self.port)

    def _server_rows(self) -> list[dict[str, str]]:
        if self.stats_port is None:
            raise ClusterProcessError(f"{self.name} was created with stats=False")
        conn = http.client.HTTPConnection(self.host, self.stats_port, timeout=2.0)
        try:
            conn.request("GET", "/;csv")
            text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return []
        finally:
            conn.close()
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return [
            row
            for row in rows
            if row.get("pxname") == "socket_nodes" and row["svname"] not in ("FRONTEND", "BACKEND")
        ]

    def server_states(self) -> dict[str, str]:
        """Each backend server's status from the stats page: ``UP``, ``DOWN``...

        Transitional states read like ``UP 1/2``; an empty dict means the
        stats page did not answer. Needs ``stats=True``.
        """
        return {row["svname"]: row["status"] for row in self._server_rows()}

    def wait_for_state(self, server: str, state: str, timeout: float = 10.0) -> None:
        """Wait until ``server`` reports ``state`` (``UP``/``DOWN``) on the stats page."""
        deadline = time.monotonic() + timeout
        while (current := self.server_states().get(server)) != state:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"HAProxy server {server!r} is {current!r}, not {state!r}, after {timeout:g} s"
                )
            time.sleep(0.1)

    def wait_all_up(self, timeout: float = 20.0) -> None:
        """Wait until every server has passed a health check and is ``UP``.

        HAProxy starts each server as "up, unchecked" and one failed check
        (a node whose ``/readyz`` is still 503 while its bus connects) takes
        it down; this waits for a real ``L7OK``. Raises
        :class:`ProcessStartError` naming the servers that are not ready.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self._server_rows()
            pending = {
                row["svname"]: f"{row['status']} ({row['check_status'] or 'no check yet'})"
                for row in rows
                if row["status"] != "UP" or not row["check_status"].startswith("L7OK")
            }
            if rows and not pending:
                return
            if time.monotonic() >= deadline:
                states = ", ".join(f"{k}: {v}" for k, v in pending.items()) or "no stats"
                raise ProcessStartError(
                    f"not every node behind {self.name} became ready (GET /readyz == 200) "
                    f"within {timeout:g} s: {states}; see the nodes' logs"
                )
            time.sleep(0.1)
