"""``./dev``: what ``up`` installs (the demo's needs) against ``setup`` (the test
toolchain too).

The script is sourced by bash with its installers replaced by functions that
record their arguments, and ``have`` answering that nothing is installed, so
no apt-get, pip or npm runs and the answer does not depend on this machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev"

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
