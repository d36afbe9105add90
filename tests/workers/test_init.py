"""The package surface: __all__ complete, no Celery for a plain script."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import workers

ROOT = str(Path(__file__).resolve().parents[2])


def test_all_is_complete_and_importable() -> None:
    public = {name for name, value in vars(workers).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)
              and name != "annotations"}
    assert set(workers.__all__) == public
    for name in workers.__all__:
        assert getattr(workers, name) is not None


def test_py_typed_is_shipped() -> None:
    assert (Path(workers.__file__).parent / "py.typed").is_file()


def test_exception_tree() -> None:
    for error in (workers.ConfigurationError, workers.PayloadError, workers.PublishError):
        assert issubclass(error, workers.WorkerError)
    assert issubclass(workers.ConfigurationError, ValueError)
    assert issubclass(workers.PayloadError, TypeError)


def test_importing_the_emitter_does_not_import_celery() -> None:
    code = "import sys, workers; print('celery' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
