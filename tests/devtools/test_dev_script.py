"""``./dev``: what ``up`` installs (the demo's needs) against ``setup`` (the test
toolchain too).

The script is sourced by bash with its installers replaced by functions that
record their arguments, and ``have`` answering that nothing is installed, so
no apt-get, pip or npm runs and the answer does not depend on this machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "dev"
RUNTIME_PINS = ROOT / "constraints" / "runtime.txt"

#: records every installer call as one JSON line: [function, arguments...]
STUBS = r"""
record() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >>"$RECORD"; }
have() { return 1; }  # nothing installed
apt_install() { record apt_install "$@"; }
make_venv() { record make_venv; }
install_project() { record install_project "$@"; }
npm_ci() { record npm_ci "${1#"$ROOT"/}"; }
demo_client() { record demo_client; }
"""

TEST_TOOLCHAIN = {"nodejs", "npm", "chromium", "chromium-driver", "faketime"}


def _run(tmp_path: Path, function: str, venv_exists: bool = True) -> list[list[str]]:
    record = tmp_path / "record"
    record.write_text("")
    python = "" if venv_exists else 'PY="$RECORD.missing-venv/bin/python"'
    script = f'source "$1"\n{STUBS}\n{python}\n{function}\n'
    done = subprocess.run(["bash", "-c", script, "bash", str(DEV)],
                          env={"PATH": "/usr/bin:/bin", "RECORD": str(record)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def _apt(calls: list[list[str]]) -> set[str]:
    return {package for call in calls if call[0] == "apt_install" for package in call[1:]}


def test_up_installs_what_the_demo_needs_and_no_test_toolchain(tmp_path: Path) -> None:
    calls = _run(tmp_path, "setup_up")
    assert _apt(calls) == {"redis-server", "haproxy"}
    assert ["install_project", "demo"] in calls
    assert ["demo_client"] in calls
    assert not [call for call in calls if call[0] == "npm_ci"]  # no tests/js


def test_setup_installs_the_test_toolchain_too(tmp_path: Path) -> None:
    calls = _run(tmp_path, "cmd_setup")
    assert _apt(calls) == {"redis-server", "haproxy"} | TEST_TOOLCHAIN
    assert ["install_project", "dev"] in calls
    assert ["npm_ci", "tests/js"] in calls and ["npm_ci", "demo/js"] in calls


@pytest.mark.parametrize("command", ["up", "setup"])
def test_a_missing_venv_asks_for_python_venv_only_when_needed(tmp_path: Path,
                                                              command: str) -> None:
    # whatever the machine's python3 lacks: at most python3 and python3-venv
    packages = _apt(_run(tmp_path, f"apt_install $(missing_packages {command})",
                         venv_exists=False))
    assert {"redis-server", "haproxy"} <= packages
    assert packages - {"redis-server", "haproxy", "python3", "python3-venv"} == (
        TEST_TOOLCHAIN if command == "setup" else set())


def test_up_runs_its_own_setup_and_setup_still_installs_everything() -> None:
    text = DEV.read_text()
    cmd_up = text[text.index("cmd_up() {"):]
    cmd_up = cmd_up[:cmd_up.index("\n}\n")]
    assert "(setup_up)" in cmd_up and "cmd_setup" not in cmd_up
    # test, lint and test-minimum (CI's .ci/run) keep the full setup
    for name in ("cmd_test", "cmd_lint", "cmd_test_minimum"):
        body = text[text.index(f"{name}() {{"):]
        assert body[:body.index("\n}\n")].split("\n")[1].strip() == "cmd_setup", name


def test_usage_lists_every_command() -> None:
    done = subprocess.run(["bash", str(DEV), "help"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("Developer entry point.\n")
    for command in ("./dev up", "./dev setup", "./dev test", "./dev lint",
                    "./dev test-minimum"):
        assert f"\n  {command} " in done.stdout, command
    assert "set -euo" not in done.stdout
    assert done.stdout.rstrip().endswith("run their own redis-server on free ports.")


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a constraints file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, version = requirement.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_runtime_pins_are_exact_and_cover_the_green_thread_stack() -> None:
    assert set(_pins(RUNTIME_PINS)) == {"greenlet", "eventlet", "gevent"}


def test_the_project_venv_runs_the_runtime_pins() -> None:
    """What ``./dev test`` runs is what the image ships: the installed
    greenlet, eventlet and gevent are constraints/runtime.txt's."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        # .venv-minimum runs the floors of constraints/minimum.txt instead
        pytest.skip(f"not ./dev's .venv ({sys.prefix}): the pins hold there only")
    installed = {name: metadata.version(name) for name in _pins(RUNTIME_PINS)}
    assert installed == _pins(RUNTIME_PINS), "run ./dev setup to install the pins"


#: a stand-in for .venv's python: records its arguments as one JSON line
FAKE_PYTHON = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >>"$RECORD"
"""


def test_the_venv_installs_with_the_runtime_pins_and_the_minimum_with_its_floors(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "constraints").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints/runtime.txt", "constraints/minimum.txt"):
        shutil.copy(ROOT / name, root / name)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    record = tmp_path / "record"
    script = f"""source "$1"
ROOT={root}; PY={fake}; STAMP={tmp_path}/stamp; DEMO_STAMP={tmp_path}/demo-stamp
MIN_PY={fake}; MIN_STAMP={tmp_path}/min-stamp
install_project dev
install_project dev
echo 'greenlet==0.0.1' >>"$ROOT/constraints/runtime.txt"
install_project dev
setup_minimum
"""
    done = subprocess.run(["bash", "-c", script, "bash", str(DEV)],
                          env={"PATH": "/usr/bin:/bin", "RECORD": str(record)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    pip = ["-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # once for the pins as they were, once more after they changed; the
    # minimum venv with its own floors and never the runtime pins
    assert calls == [[*pip, "-c", "constraints/runtime.txt", "-e", ".[dev]"],
                     [*pip, "-c", "constraints/runtime.txt", "-e", ".[dev]"],
                     [*pip, "-c", "constraints/minimum.txt", "-e", ".[test]"]]
