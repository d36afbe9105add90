"""The green-thread runtimes the tests run nodes on (:mod:`cluster.runtime`).

Nodes started by the tests inherit the test process's environment, so
``CLUSTER_ASYNC_MODE=gevent ./dev test ...`` runs every node of those tests
on gevent; :data:`NODE_ASYNC_MODE` is that choice (eventlet by default).
``tests/gevent`` runs a set of the integration tests on gevent whatever it
is.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from cluster import runtime

#: the runtime of the nodes the tests start (``CLUSTER_ASYNC_MODE``)
NODE_ASYNC_MODE = os.environ.get(runtime.ENV_VAR) or runtime.DEFAULT_MODE


def require_runtime(mode: str) -> Any:
    """The :class:`cluster.runtime.Runtime` of ``mode``; its library
    missing skips the test, or fails it under ``CI=true`` (CI installs
    both: ``pip install -e '.[test]'``)."""
    try:
        return runtime.load(mode)
    except runtime.RuntimeUnavailableError as exc:
        message = f"{exc} (the test extra installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
