"""One node's wall clock 5 s or 90 s off the others' (and Redis's).

The outcome must be explicit, never traffic dropped silently: the skewed
node refuses to start with an error naming the skew and the fix (see
:mod:`cluster.bus.clock`). The clock is shifted with libfaketime
(preloaded with ``FAKETIME=+Ns``, Debian package ``faketime``, which
``./dev setup`` installs), monotonic time left true so that timeouts and
leases are.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from cluster.devtools.local_cluster import NodeProcess, ProcessStartError
from tests.faults.conftest import FAULT_APP
from tests.harness.fixtures import NODE_START_TIMEOUT, _used_by, with_bus_secret

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def _libfaketime() -> str:
    """libfaketime's preload library (Debian's ``faketime`` package). It is
    preloaded into the node itself rather than run through the ``faketime``
    wrapper, which forks: the node must be the process the harness stops
    by PID."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        message = "libfaketime is not installed (./dev setup installs Debian's faketime)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return found[0]


class SkewedNode(NodeProcess):
    """A node whose wall clock runs ``shift`` seconds off (ahead if positive)."""

    def __init__(self, app: str, shift: float, **kwargs: Any) -> None:
        env = dict(kwargs.pop("env", None) or {})
        env.update(LD_PRELOAD=_libfaketime(), FAKETIME=f"{shift:+g}s",
                   DONT_FAKE_MONOTONIC="1")  # timeouts and leases stay true
        super().__init__(app, env=env, **kwargs)
        self.shift = shift


@pytest.mark.parametrize("shift", [5.0, 90.0, -5.0], ids=["5s-ahead", "90s-ahead", "5s-behind"])
def test_a_node_whose_clock_is_off_is_refused_at_start_with_the_fix(
        shift: float, request: pytest.FixtureRequest, tmp_path: Path, node_factory: Any,
        redis_url: str) -> None:
    # found by this scenario: a skewed node used to start, report ready and
    # then lose traffic silently (at +5 s every logged message it sent was
    # dropped by the others as dropped_bad_offset, at +90 s everything both
    # ways as too old); now it refuses to start, saying why and what to do
    (steady,) = node_factory(app=FAULT_APP)
    skewed = SkewedNode(FAULT_APP, shift, message_queue=redis_url, env=with_bus_secret(None),
                        name="skewed", log_path=tmp_path / "logs" / "skewed.log",
                        cwd=request.config.rootpath, start_timeout=NODE_START_TIMEOUT)
    _used_by(request.node, skewed)
    request.addfinalizer(lambda: skewed.stop(grace=5.0))
    with pytest.raises(ProcessStartError):
        skewed.start()
    assert skewed.wait(10) == 2
    log = skewed.log_text()
    direction = "ahead of" if shift > 0 else "behind"
    assert f"{abs(shift):.0f}" in log and direction in log, log[-2000:]
    assert "max_clock_skew=2 s" in log and "NTP" in log, log[-2000:]
    assert "Traceback" not in log
    # the rest of the cluster is untouched
    assert requests.get(f"{steady.url}/readyz", timeout=5).status_code == 200
