"""Every node the tests of this folder start runs on gevent.

Nodes inherit the test process's environment, so ``CLUSTER_ASYNC_MODE`` is
set for the whole folder, before any fixture starts a node.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.runtimes import require_runtime


@pytest.fixture(scope="package", autouse=True)
def nodes_on_gevent() -> Iterator[None]:
    require_runtime("gevent")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLUSTER_ASYNC_MODE", "gevent")
        yield
