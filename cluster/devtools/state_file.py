"""The state file of ``python -m cluster.devtools up``: which cluster of ours runs where.

One JSON file per port, ``socketio-cluster-local-PORT.json`` in
``$XDG_RUNTIME_DIR`` (else the temporary directory), written once the
cluster is up and removed when it stops. It lets the next start on that port
say *what* holds the port: a running cluster of ours (its runner's PID), or
processes left over by a runner that died (their names and PIDs). A process
counts as ours only if its PID is alive *and* its command line is the one
recorded, so a reused PID is never named.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClusterState", "StateFile", "process_alive"]


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_alive(pid: int, argv: list[str] | None = None) -> bool:
    """True if ``pid`` runs, and (when given) its command line starts with ``argv``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return argv is None  # alive but someone else's: not ours when argv is checked
    if not argv:
        return True
    current = _cmdline(pid)
    if current is None:  # no /proc: trust the PID
        return True
    return current[: len(argv)] == argv


@dataclass
class ClusterState:
    """What a state file records: the runner and every child, with their argv."""

    port: int
    runner_pid: int
    runner_argv: list[str]
    started: float
    workdir: str
    processes: list[dict[str, Any]]

    def runner_alive(self) -> bool:
        return process_alive(self.runner_pid, self.runner_argv)

    def leftovers(self) -> list[dict[str, Any]]:
        """The recorded children that still run (same PID, same command line)."""
        return [p for p in self.processes if process_alive(p["pid"], p["argv"])]


class StateFile:
    """The state file of the local cluster on ``port``."""

    def __init__(self, port: int, directory: str | os.PathLike[str] | None = None) -> None:
        base = directory or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        self.path = Path(base) / f"socketio-cluster-local-{port}.json"
        self.port = port

    def read(self) -> ClusterState | None:
        """The recorded state, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
            return ClusterState(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, workdir: Path, processes: list[Any]) -> None:
        """Record this process as the runner and ``processes`` (``ManagedProcess``) as children."""
        state = {
            "port": self.port,
            "runner_pid": os.getpid(),
            "runner_argv": _cmdline(os.getpid()) or [],
            "started": time.time(),
            "workdir": str(workdir),
            # the command line as the kernel shows it now: redis-server rewrites its own
            "processes": [{"name": p.name, "pid": p.pid,
                           "argv": (_cmdline(p.pid) or p.command())[:4]}
                          for p in processes if p.pid is not None],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.path)  # atomic: a reader never sees half a file

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def problem(self) -> str | None:
        """Why the port is taken by a cluster of ours, or None (a stale file is removed)."""
        state = self.read()
        if state is None:
            return None
        when = time.strftime("%H:%M:%S", time.localtime(state.started))
        if state.runner_alive():
            return (f"a local cluster started at {when} is still running on port {self.port} "
                    f"(runner pid {state.runner_pid}); stop it with Ctrl-C in its terminal "
                    f"or `kill {state.runner_pid}`, or pass another --port")
        leftovers = state.leftovers()
        if leftovers:
            names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in leftovers)
            pids = " ".join(str(p["pid"]) for p in leftovers)
            return (f"the local cluster started at {when} on port {self.port} lost its runner "
                    f"(pid {state.runner_pid}) but left these running: {names}; stop them "
                    f"with `kill {pids}`")
        self.remove()
        return None
