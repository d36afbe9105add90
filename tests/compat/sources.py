"""Flask-SocketIO's own files, fetched at test time and never vendored.

The compatibility job runs Flask-SocketIO 5.7.0's test module and example
application against ``cluster``. Both come from upstream when the tests run:

- the sdist from PyPI (``pip download --no-binary :all:``), which holds
  ``test_socketio.py``, ``docs/api.rst`` and the package itself;
- ``example/`` from the release's tag archive on GitHub (the sdist does not
  ship it).

Each is cached in pytest's cache directory, so a second run needs no
network. When a source cannot be fetched, :class:`SourceUnavailable` says
why; the test suite job skips on a developer's offline machine and fails
under ``CI=true``, where a silent skip would hide it; the example test,
whose source is on GitHub only, skips with the reason in both cases.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import pytest

VERSION = "5.7.0"
EXAMPLE_ARCHIVE = (
    "https://codeload.github.com/miguelgrinberg/Flask-SocketIO/tar.gz/refs/tags/v" + VERSION)
DOWNLOAD_TIMEOUT = 180


class SourceUnavailable(Exception):
    """An upstream file could not be fetched (no network, PyPI or GitHub down)."""


def cache_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where fetched sources live: pytest's cache, else a session temp dir."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(f"flask-socketio-{VERSION}"))
    return tmp_path_factory.mktemp(f"flask-socketio-{VERSION}")


def unavailable(exc: SourceUnavailable, required_in_ci: bool = True) -> None:
    """Skip (a developer offline) or fail (CI): never pass silently.

    ``required_in_ci=False`` skips under CI too, with the reason in the
    report: for the example, which only GitHub serves, where CI machines
    that reach PyPI (the job itself) may have no route.
    """
    if required_in_ci and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the compatibility job cannot run: {exc}", pytrace=False)
    pytest.skip(f"{exc} (with CI=true this fails)" if required_in_ci else str(exc))


def sdist(root: Path) -> Path:
    """The unpacked ``flask-socketio==VERSION`` sdist, downloaded once."""
    target = root / "sdist"
    if (target / "test_socketio.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as download:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--disable-pip-version-check", "-q", f"flask-socketio=={VERSION}",
                 "-d", download],
                check=True, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", "") or ""
            raise SourceUnavailable(
                f"pip could not download flask-socketio=={VERSION} from PyPI: "
                f"{output.strip().splitlines()[-1:] or exc}") from exc
        (archive,) = Path(download).glob("*.tar.gz")
        _unpack(archive.read_bytes(), target)
    return target


def example(root: Path) -> Path:
    """``example/`` of the VERSION release (app.py and its templates)."""
    target = root / "example"
    if (target / "app.py").is_file():
        return target
    try:
        with urllib.request.urlopen(EXAMPLE_ARCHIVE, timeout=60) as response:  # noqa: S310
            data = response.read()
    except OSError as exc:
        raise SourceUnavailable(f"could not fetch {EXAMPLE_ARCHIVE}: {exc}") from exc
    _unpack(data, root / "repository")
    shutil.copytree(root / "repository" / "example", target)
    return target


def _unpack(data: bytes, target: Path) -> None:
    """Extract a .tar.gz into ``target``, dropping its top directory."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(staging, filter="data")
    (top,) = [path for path in staging.iterdir() if path.is_dir()]
    shutil.rmtree(target, ignore_errors=True)
    top.rename(target)
    shutil.rmtree(staging, ignore_errors=True)


def swap_import(source: str) -> str:
    """Flask-SocketIO code with its one import changed to ``cluster``."""
    source = re.sub(r"^(\s*)from flask_socketio import", r"\1from cluster import", source,
                    flags=re.MULTILINE)
    return re.sub(r"^(\s*)import flask_socketio\b(?! as)", r"\1import cluster as flask_socketio",
                  source, flags=re.MULTILINE)
