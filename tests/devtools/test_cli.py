"""cluster.devtools.cli: ``python -m cluster.devtools up`` and ``./dev up``, which runs it."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

import cluster
from cluster.devtools.processes import free_port, port_accepts

DEV = Path(__file__).resolve().parents[2] / "dev"


def test_devtools_up_help_lists_the_options() -> None:
    done = subprocess.run([sys.executable, "-m", "cluster.devtools", "up", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m cluster.devtools up")
    for option in ("--nodes", "--port", "--app", "--redis-url", "--no-worker", "--logs",
                   "--log-format"):
        assert option in done.stdout


def test_devtools_up_parses_what_dev_up_passes() -> None:
    from cluster.devtools.cli import build_parser

    args = build_parser().parse_args(["up", "--app", "m:s", "--nodes", "3", "--port", "9000",
                                      "--redis-url", "redis://r/1", "--no-worker",
                                      "--logs", "/tmp/l", "--log-format", "json"])
    assert (args.command, args.app, args.nodes, args.port, args.redis_url, args.worker,
            args.logs, args.log_format) == ("up", "m:s", 3, 9000, "redis://r/1", False,
                                            "/tmp/l", "json")
    defaults = build_parser().parse_args(["up"])
    assert (defaults.app, defaults.nodes, defaults.port, defaults.worker, defaults.logs,
            defaults.log_format) == ("demo.app:socketio", 2, 8000, True, None, "text")


def test_the_runtime_never_imports_devtools() -> None:
    """No module of ``cluster`` outside ``cluster.devtools`` imports it (nor ``workers``)."""
    package = Path(cluster.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if package / "devtools" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if "devtools" in name.split(".") or name.split(".")[0] == "workers":
                    offenders.append(f"{path.relative_to(package.parent)}: {name}")
    assert offenders == []


def test_dev_up_help_is_about_up() -> None:
    done = subprocess.run(["bash", str(DEV), "up",
                           "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: ./dev up")
    assert "--no-worker" in done.stdout and "--app MODULE:ATTR" in done.stdout


def test_dev_up_serves_an_app_from_the_users_directory(tmp_path: Path) -> None:
    """./dev up --app mymodule:socketio, run from the application's folder."""
    (tmp_path / "i18_myapp.py").write_text(textwrap.dedent("""
        from flask import Flask
        from cluster import SocketIO
        app = Flask(__name__)
        app.config["SECRET_KEY"] = "x" * 32
        socketio = SocketIO(app)

        @app.route("/")
        def index():
            return "my app from my folder"
        """))
    port = free_port()
    out = tmp_path / "up.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(["bash", str(DEV), "up", "--app", "i18_myapp:socketio",
                                 "--nodes", "1", "--no-worker", "--port", str(port)],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # ./dev checks its setup first
        while "ready;" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        response = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert response.text == "my app from my folder"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not port_accepts("127.0.0.1", port)
