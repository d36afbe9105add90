"""Child processes of the suite: each in its own process group, stopped by PID.

Every process the suite starts goes through :class:`Procs`, which remembers
it; leaving the ``with Procs()`` block (normally, on an exception or on
Ctrl-C) stops whatever is still running. A child is started with
``start_new_session=True``, so its PID is also its process-group id, and
stopping it signals that group: a node that forked (Celery's prefork pool)
goes with all its children, and nothing else is ever signalled. No process
is found by name.
"""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
# the machine's own Redis; the suite must never touch it
SYSTEM_REDIS_PORT = 6379
# variables a child could inherit from the user's shell and that would send it
# to another bus, sign its messages or turn recovery on behind our back
SCRUBBED_ENV = ("MESSAGE_QUEUE_URL", "REDIS_URL", "MESSAGE_QUEUE_CHANNEL",
                "CLUSTER_SIGNING_SECRET", "CONNECTION_STATE_RECOVERY", "CELERY_BROKER_URL",
                "CELERY_RESULT_BACKEND", "CELERY_QUEUE", "SESSION_TTL", "NODE_NAME")


class SuiteError(RuntimeError):
    """Something the suite needs did not start or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    # unsigned, like the peers measured beside it (and the earlier runs): the
    # nodes, workers and emitters refuse an unsigned bus without this opt-out
    env["CLUSTER_ALLOW_UNSIGNED_BUS"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """One child process, its output in ``log_path`` (stdin/stdout piped when ``pipe``)."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 pipe: bool = False, port: int | None = None) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.env, self.cwd, self.pipe = env, cwd, pipe
        self.port = port  # where it listens, for the ones that do
        self.popen: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")
        self.popen = subprocess.Popen(
            self.argv, cwd=self.cwd, env=dict(self.env) if self.env is not None else None,
            stdin=subprocess.PIPE if self.pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.pipe else self._log, stderr=self._log,
            text=True, bufsize=1, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to this child's own process group (its PID is the group id)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; reap the child."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while children of its group live on
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<{self.name} pid {self.popen.pid if self.popen else '-'}>"


class Procs:
    """Starts children and stops every one of them when the block ends."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[Proc] = []
        self._counts: dict[str, int] = {}

    def spawn(self, name: str, argv: Sequence[str], **kwargs: Any) -> Proc:
        self._counts[name] = self._counts.get(name, 0) + 1
        label = f"{name}-{self._counts[name]}"
        proc = Proc(label, argv, log_path=self.logdir / f"{label}.log", **kwargs)
        self.started.append(proc)
        return proc.start()

    def stop(self, procs: Sequence[Proc], grace: float = 5.0) -> None:
        for proc in procs:  # all at once, so their grace periods overlap
            if proc.running():
                proc.signal_group(signal.SIGTERM)
        for proc in procs:
            proc.stop(grace)
            if proc in self.started:
                self.started.remove(proc)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(list(reversed(self.started)), grace=3.0)


# -- waiting ---------------------------------------------------------------------

def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_until(check: Any, what: str, timeout: float, procs: Sequence[Proc] = ()) -> None:
    """Poll ``check()`` until true; fail early when one of ``procs`` exited."""
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if not proc.running():
                raise SuiteError(f"{proc.name} exited while waiting for {what}:\n"
                                 f"{proc.log_tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.log_tail(8)}" for p in procs)
            raise SuiteError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(0.1)


def start_redis(procs: Procs) -> tuple[Proc, str]:
    """A private redis-server on a free port, no persistence; (process, URL)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SuiteError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = procs.logdir / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = procs.spawn("redis", [executable, "--port", str(port), "--bind", HOST,
                                 "--save", "", "--appendonly", "no", "--dir", str(workdir),
                                 "--maxclients", "20000"])

    def answers() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(answers, "redis-server", 10.0, [proc])
    return proc, f"redis://{HOST}:{port}/0"


def redis_command(url: str, *words: str) -> bytes:
    """One inline Redis command on a fresh connection (FLUSHALL between targets)."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((" ".join(words) + "\r\n").encode())
        return sock.recv(256)


# -- /proc and limits --------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tcp_segments(ports: Sequence[int]) -> dict[tuple[str, str], tuple[int, int]]:
    """TCP segments sent and received so far by each established socket
    whose local port is one of ``ports`` (a node's clients: what it sent
    them, and their ACKs and frames), keyed by (local, peer) address, from
    ``ss -ti``; empty when ``ss`` is missing. See :func:`segments_between`."""
    if not ports or shutil.which("ss") is None:
        return {}
    match = " or ".join(f"sport = :{port}" for port in ports)
    try:
        text = subprocess.run(["ss", "-tinH", "state", "established", f"( {match} )"],
                              capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    sockets: dict[tuple[str, str], tuple[int, int]] = {}
    key: tuple[str, str] | None = None
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):  # "Recv-Q Send-Q local peer"
            fields = line.split()
            key = (fields[2], fields[3]) if len(fields) >= 4 else None
            continue
        counters = dict(field.split(":", 1) for field in line.split()
                        if field.startswith(("segs_out:", "segs_in:")))
        if key is not None:  # ss leaves out a counter that is still 0
            sockets[key] = (int(counters.get("segs_out", 0)), int(counters.get("segs_in", 0)))
    return sockets


def segments_between(before: dict[tuple[str, str], tuple[int, int]],
                     after: dict[tuple[str, str], tuple[int, int]],
                     sockets: int) -> tuple[int, int] | None:
    """Segments (sent, received) between two :func:`tcp_segments` samples,
    over the sockets open at both (counters are per socket); None unless at
    least ``sockets`` were (clients that left meanwhile took their counts
    with them: the load generator closing at the end of a run)."""
    common = before.keys() & after.keys()
    if not common or len(common) < sockets:
        return None
    return (sum(after[k][0] - before[k][0] for k in common),
            sum(after[k][1] - before[k][1] for k in common))


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft open-file limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm_like_ctrl_c() -> None:
    """Make SIGTERM end a benchmark run the way Ctrl-C does, so its finally
    blocks stop the children and write what was measured."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
