"""Child processes of a local cluster: the base class, redis-server, socket nodes.

Each class wraps one real process started with :class:`subprocess.Popen` and
controlled by its PID only (never by name, never by process group), so tests
and ``python -m cluster.devtools up`` can kill a node with ``SIGKILL`` to simulate a
crash, restart it on the same port, and at the end stop exactly what they
started.

Every process writes stdout and stderr to one log file, appended to across
restarts so a test failure shows the whole story. Children run in their own
session so that a Ctrl-C in the terminal reaches only the parent, which then
stops them in order. On Linux each child also asks the kernel for a SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``), so a parent that is killed, or
whose terminal closes, leaves no Redis, node, HAProxy or worker behind.

:mod:`cluster.devtools.local_cluster` adds HAProxy and composes these into a whole
cluster; the test harness (``tests/harness/fixtures.py``) builds its
fixtures on them.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from cluster.exceptions import ClusterError

__all__ = [
    "ClusterProcessError",
    "ExecutableNotFoundError",
    "ManagedProcess",
    "NodeProcess",
    "ProcessStartError",
    "RedisServerProcess",
    "find_executable",
    "free_port",
    "port_accepts",
    "stop_all",
]

# The system Redis usually listens here; a local cluster must never touch it.
_SYSTEM_REDIS_PORT = 6379
#: ports free_port handed out, oldest first, and how many it remembers (a
#: fraction of Linux's ~28,000 ephemeral ports, so a pick always exists)
_HANDED_OUT: OrderedDict[int, None] = OrderedDict()
_HANDED_OUT_KEPT = 4096
_HANDED_OUT_LOCK = threading.Lock()
# Where Debian puts haproxy; not on a non-root user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ClusterProcessError(ClusterError, RuntimeError):
    """A child process of the local cluster could not be found, started or stopped."""


class ExecutableNotFoundError(ClusterProcessError):
    """A program the local cluster needs (redis-server, haproxy) is not installed."""


class ProcessStartError(ClusterProcessError):
    """A child process exited or did not become ready while starting."""


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Any:
    # loaded once in the parent: the child between fork and exec must not
    # take locks, and dlopen would
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None


_prctl = _load_prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGTERM when ``parent_pid`` dies.

    The signal follows the thread that forked, so children are spawned from
    long-lived threads (the main thread of ``cluster.devtools up``, a test's
    thread). If the parent already died before the call, the child exits at
    once instead of running unowned.
    """

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def find_executable(name: str, package: str) -> str:
    """Return the path of ``name``, looking in ``/usr/sbin`` too.

    Raises :class:`ExecutableNotFoundError` naming the Debian ``package``.
    """
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if found is None:
        raise ExecutableNotFoundError(
            f"{name} was not found on PATH or in {', '.join(_SBIN_DIRS)}; "
            f"install it with: apt-get install {package}"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it; 6379 (the system Redis) is never returned, and
    neither is a port this process was given before: a port is free until
    whoever asked for it binds it, so two processes started one after the
    other (two nodes of one test, each still importing its application)
    could otherwise both be given the same one.
    """
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port != _SYSTEM_REDIS_PORT and port not in _HANDED_OUT:
                _HANDED_OUT[port] = None
                if len(_HANDED_OUT) > _HANDED_OUT_KEPT:
                    # long given out: bound by their owner by now, or let go
                    _HANDED_OUT.popitem(last=False)
                return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_all(processes: Sequence[ManagedProcess], grace: float = 5.0) -> None:
    """Stop several processes at once: ``SIGTERM`` to all, ``SIGKILL`` after ``grace``.

    Signalling all before waiting lets nodes drain in parallel, so stopping
    N of them takes one grace period, not N.
    """
    for process in processes:
        process.kill(signal.SIGTERM)
        process.kill(signal.SIGCONT)  # a stopped (SIGSTOP) process would ignore SIGTERM
    deadline = time.monotonic() + grace
    for process in processes:
        process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        process.stop(grace=0)


class ManagedProcess:
    """One child process, its log file, and how to tell that it is ready.

    Subclasses implement :meth:`command` and :meth:`is_ready`, and may add to
    :meth:`environment`. ``start_timeout`` bounds :meth:`wait_ready`;
    ``log_path`` defaults to a file in a fresh temporary directory. The port
    a subclass listens on is fixed at construction so :meth:`start` after
    :meth:`kill` or :meth:`stop` comes back on the same port.
    """

    host: str = "127.0.0.1"
    port: int = 0

    def __init__(
        self,
        name: str,
        *,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.name = name
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix=f"cluster-{name}-")) / f"{name}.log"
        self.log_path = Path(log_path)
        self.cwd = None if cwd is None else Path(cwd)
        self.start_timeout = start_timeout
        self._popen: subprocess.Popen[bytes] | None = None

    # -- what subclasses provide -------------------------------------------

    def command(self) -> list[str]:
        """The argv of the process."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The environment of the process; None inherits ours."""
        return None

    def is_ready(self) -> bool:
        """True once the process serves what it is for."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the last started process (kept after it exits), or None."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process, None while it runs or before a start."""
        return None if self._popen is None else self._popen.poll()

    def is_running(self) -> bool:
        """True while the last started process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.is_running():
            raise ProcessStartError(f"{self.name} is already running (pid {self.pid})")
        if self.port and port_accepts(self.host, self.port, timeout=0.2):
            # Otherwise the readiness check could succeed against a stranger.
            raise ProcessStartError(
                f"cannot start {self.name}: {self.host}:{self.port} is already in use "
                "by another process; stop it or choose another port"
            )
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {shlex.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.cwd,
                # Own session: a terminal's Ctrl-C goes to the parent only,
                # which stops the children in order.
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until :meth:`is_ready`; raise :class:`ProcessStartError` otherwise."""
        if self._popen is None:
            raise ProcessStartError(f"{self.name} was never started; call start() first")
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            code = self._popen.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with status {code} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                self.stop(grace=1.0)
                raise ProcessStartError(
                    f"{self.name} did not become ready within {limit:g} s and was stopped; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def start(self) -> Self:
        """Start the process (again, on the same port) and wait until it is ready."""
        self.spawn()
        self.wait_ready()
        return self

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; return its status."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process by PID.

        After ``SIGKILL`` the process is reaped before returning, so its port
        is free and it is no longer running. Other signals return at once.
        """
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            popen.wait()

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process: ``SIGTERM``, then ``SIGKILL`` after ``grace`` seconds.

        Returns the exit status; a no-op when the process is not running.
        """
        if self._popen is None:
            return None
        if self.is_running():
            self.kill(signal.SIGTERM)
            self.kill(signal.SIGCONT)  # a stopped (SIGSTOP) process would ignore SIGTERM
            if self.wait(grace) is None:
                self.kill(signal.SIGKILL)
        return self._popen.wait()

    # -- logs -----------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the process (all its runs) wrote to stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of :meth:`log_text`."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port} pid={self.pid} {state}>"


class RedisServerProcess(ManagedProcess):
    """A throwaway ``redis-server`` bound to ``host`` on ``port``.

    ``port=None`` picks a free port (never 6379). Persistence is off
    (``--save "" --appendonly no``) so a restart after ``kill()`` comes back
    empty, like a real crash without persistence. ``workdir`` (a fresh
    temporary directory by default) holds the log and is Redis's ``--dir``.
    ``executable`` defaults to ``redis-server`` found on PATH. Ready once
    ``PING`` answers ``PONG``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        name: str = "redis",
    ) -> None:
        self.executable = executable or find_executable("redis-server", "redis-server")
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cluster-redis-"))
        super().__init__(name, log_path=self.workdir / f"{name}.log", start_timeout=start_timeout)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        # A raw PING keeps this module free of a redis-py import.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` connected to this server; ``kwargs`` go to ``from_url``."""
        import redis  # the cluster bus needs redis-py anyway; imported late to stay light

        return redis.Redis.from_url(self.url, **kwargs)


class NodeProcess(ManagedProcess):
    """One socket node: ``python -m cluster node --app APP --host H --port P``.

    ``message_queue`` adds ``--message-queue URL`` (None: a single node, no
    bus). The node gets our environment without ``MESSAGE_QUEUE_URL`` and
    ``REDIS_URL`` (so an inherited URL cannot join it to a bus behind the
    caller's back), with ``PYTHONUNBUFFERED=1``, updated by ``env``.
    ``extra_args`` are appended to the command line. ``python`` defaults to
    the running interpreter, ``module`` to ``cluster`` (tests swap in a
    stand-in). Ready once ``GET /readyz`` answers 200, within
    ``start_timeout`` seconds (20 by default: eventlet or gevent and Flask
    take a while to import on a busy machine).
    """

    def __init__(
        self,
        app: str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        message_queue: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "node1",
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        python: str | None = None,
        module: str = "cluster",
        start_timeout: float = 20.0,
    ) -> None:
        super().__init__(name, log_path=log_path, cwd=cwd, start_timeout=start_timeout)
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self.message_queue = message_queue
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.module = module

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        argv = [self.python, "-m", self.module, "node", "--app", self.app,
                "--host", self.host, "--port", str(self.port)]  # fmt: skip
        if self.message_queue:
            argv += ["--message-queue", self.message_queue]
        return argv + self.extra_args

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MESSAGE_QUEUE_URL", "REDIS_URL")}
        env["PYTHONUNBUFFERED"] = "1"
        env["NODE_NAME"] = self.name  # the app and the logs can tell nodes apart
        env.update(self.env)
        return env

    def http_status(self, path: str, timeout: float = 1.0) -> int | None:
        """Status of ``GET path`` on this node, None if it does not answer."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def is_ready(self) -> bool:
        # ready, not just alive: subscribed to the bus and aware of its peers
        return self.http_status("/readyz") == 200
