"""The targets: this project, Flask-SocketIO + RedisManager, Node socket.io + redis-adapter.

Each target is started as N node processes on 127.0.0.1 free ports, all on
the one Redis of the run, and is ready when every node answers ``GET
/readyz`` with 200 (this project's node: bus connected; the peers: their
server listens and, for Node, both Redis clients are connected). What a
target's node *is* lives here; what is measured lives in :mod:`.measures`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .procs import HOST, Proc, Procs, SuiteError, child_env, free_port, http_status, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "benchmarks" / "node"
PYTHON = sys.executable
# importing eventlet, Flask and the app takes seconds on a loaded 2-core box
START_TIMEOUT = 40.0


@dataclass(frozen=True)
class Target:
    """One implementation under test; ``argv(port, redis_url)`` runs one node of it."""

    key: str
    label: str
    argv: Callable[[int, str], list[str]]
    deflate: bool = True      # measure clients offering permessage-deflate
    memory: bool = True       # measure idle memory per connection
    celery: bool = False      # measure Celery-to-client latency (only this project has workers)
    failover: bool = True     # measure resume after a SIGKILLed node


def _cluster(extra: list[str]) -> Callable[[int, str], list[str]]:
    def argv(port: int, redis_url: str) -> list[str]:
        return [PYTHON, "-m", "cluster", "node", "--app", "benchmarks.fanout_app:socketio",
                "--host", HOST, "--port", str(port), "--message-queue", redis_url,
                "--log-level", "WARNING", *extra]
    return argv


def _flask_socketio(port: int, redis_url: str) -> list[str]:
    return [PYTHON, "-m", "benchmarks.peers.flask_socketio_app", "--host", HOST,
            "--port", str(port), "--message-queue", redis_url]


def _node(port: int, redis_url: str) -> list[str]:
    return [node_executable(), str(NODE_DIR / "server.mjs"), "--host", HOST,
            "--port", str(port), "--redis", redis_url]


TARGETS: dict[str, Target] = {t.key: t for t in (
    Target("cluster", "this project", _cluster([]), celery=True),
    # the same node with connection state recovery on: the cost of the offsets
    Target("cluster-recovery", "this project, recovery on", _cluster(["--recovery-window", "120"]),
           deflate=False, memory=False),
    # the same node on the other runtime (python -m cluster node --async-mode gevent)
    Target("cluster-gevent", "this project on gevent", _cluster(["--async-mode", "gevent"]),
           deflate=False),
    Target("flask-socketio", "Flask-SocketIO 5.7 + RedisManager, eventlet", _flask_socketio),
    Target("node", "Node socket.io 4.8 + redis-adapter", _node),
)}


def start_nodes(procs: Procs, target: Target, count: int, redis_url: str) -> list[Proc]:
    """Start ``count`` nodes of ``target`` at once; return when all are ready."""
    nodes = []
    for _ in range(count):
        port = free_port()
        nodes.append(procs.spawn(target.key, target.argv(port, redis_url), cwd=str(ROOT),
                                 env=child_env({"PYTHONUNBUFFERED": "1"}), port=port))
    for proc in nodes:
        wait_until(lambda p=proc: http_status(p.port, "/readyz") == 200,
                   f"{proc.name} /readyz", START_TIMEOUT, [proc])
    return nodes


def node_url(proc: Proc) -> str:
    return f"http://{HOST}:{proc.port}"


# -- what the targets need installed ---------------------------------------------

def node_executable() -> str:
    found = shutil.which("node")
    if found is None:
        raise SuiteError("Node.js is not installed (./dev setup installs it, or apt-get install "
                         "nodejs npm)")
    return found


def haproxy_executable() -> str:
    # Debian puts it in /usr/sbin, which a non-root PATH may lack
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin")
    if found is None:
        raise SuiteError("haproxy is not installed (apt-get install haproxy)")
    return found


def ensure_node_modules() -> None:
    """``npm ci`` in benchmarks/node when its packages are missing (lock file pinned)."""
    if all((NODE_DIR / "node_modules" / name / "package.json").exists()
           for name in ("socket.io", "socket.io-client", "@socket.io/redis-adapter", "redis")):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SuiteError("npm is not installed (apt-get install npm)")
    print("installing the benchmark's Node packages (npm ci in benchmarks/node) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)


def bench_requirements() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"]["bench"])


def ensure_python_bench() -> None:
    """Install the ``bench`` extra's packages when Flask-SocketIO or matplotlib is missing.

    Only the extra's own requirements are installed (not the project again), so
    a test run using the same venv meanwhile is not disturbed.
    """
    if all(importlib.util.find_spec(name) for name in ("flask_socketio", "matplotlib")):
        return
    requirements = bench_requirements()
    print(f"installing the bench extra: {' '.join(requirements)} ...", flush=True)
    subprocess.run([PYTHON, "-m", "pip", "install", *requirements], check=True, timeout=900)
    importlib.invalidate_caches()


def node_package_version(name: str) -> str | None:
    try:
        package_json = NODE_DIR / "node_modules" / name / "package.json"
        return json.loads(package_json.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
