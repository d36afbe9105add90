"""cluster.bus.clock: a clock too far from Redis's is refused at start (node
and emitter) and makes a running node not-ready, explicitly."""

from __future__ import annotations

import glob
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.bus.clock import ClockWatch, check_offset, measure_offset
from cluster.bus.errors import BusClockSkew

ROOT = Path(__file__).resolve().parents[2]


def test_the_offset_is_read_halfway_through_the_round_trip() -> None:
    ticks = iter([100.0, 100.4])  # our clock before and after the server answered
    offset, uncertainty = measure_offset(lambda: 110.2, local_time=lambda: next(ticks))
    assert offset == pytest.approx(10.0) and uncertainty == pytest.approx(0.2)
    assert measure_offset(lambda: None) is None


def test_only_a_skew_surely_past_the_bound_is_refused() -> None:
    check_offset(2.5, 0.6, 2.0, "This node")  # within the round trip's doubt
    with pytest.raises(BusClockSkew) as refused:
        check_offset(-7.0, 0.01, 2.0, "This emitter")
    message = str(refused.value)
    assert "This emitter's clock is 7.0 s ahead of the Redis server's" in message
    assert "max_clock_skew=2 s" in message and "NTP" in message
    with pytest.raises(BusClockSkew, match="3.0 s behind"):
        check_offset(3.0, 0.0, 2.0, "This node")


def test_a_running_node_whose_clock_drifts_is_not_ready_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    watch = ClockWatch(2.0, logging.getLogger("test.clock"))
    server = [0.0]

    def server_time() -> float:
        import time
        return time.time() + server[0]

    with caplog.at_level(logging.WARNING, logger="test.clock"):
        watch.measure(server_time)
        assert not watch.skewed
        server[0] = -30.0  # our clock is now 30 s ahead
        for _ in range(3):
            watch.measure(server_time)
        assert watch.skewed and watch.offset == pytest.approx(-30.0, abs=0.5)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "not-ready" in errors[0].getMessage()

        def down() -> float:
            raise ConnectionError("Redis is down")

        watch.measure(down)  # an outage is not a clock verdict
        assert watch.skewed
        server[0] = 0.0
        watch.measure(server_time)
        assert not watch.skewed
        assert "back within max_clock_skew" in caplog.records[-1].getMessage()


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and libfaketime is not installed (./dev setup installs it)")
        pytest.skip("libfaketime is not installed")
    return found[0]


def test_an_emitter_whose_clock_is_off_is_refused_at_start(redis_url: str) -> None:
    found = [_libfaketime()]
    script = ("import sys\n"
              "from workers import ConfigurationError, Emitter\n"
              "try:\n"
              "    emitter = Emitter(sys.argv[1], signing_secret='0123456789abcdef-clock-test')\n"
              "    emitter.emit('hello', to='nobody')\n"
              "except ConfigurationError as exc:\n"
              "    print(type(exc).__name__, exc)\n"
              "    sys.exit(3)\n")
    # preloaded into the emitter's own process (the faketime wrapper forks)
    done = subprocess.run([sys.executable, "-c", script, redis_url],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LD_PRELOAD=found[0], FAKETIME="+20s",
                                   DONT_FAKE_MONOTONIC="1"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "This emitter's clock is 20" in done.stdout and "ahead of" in done.stdout
    # the same emitter with a true clock goes through
    ok = subprocess.run([sys.executable, "-c", script, redis_url], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_a_node_on_redis_cluster_whose_clock_is_off_is_refused_at_start(
        redis_cluster_url: str) -> None:
    # the plain-URL check cannot follow a cluster's slot map: the bus's own
    # connector asks the shard that carries the channel
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", "tests.apps.chat_app:socketio",
         "--port", str(port), "--message-queue", redis_cluster_url,
         "--signing-secret", "0123456789abcdef-clock-test"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
        env=dict(os.environ, LD_PRELOAD=_libfaketime(), FAKETIME="+20s",
                 DONT_FAKE_MONOTONIC="1"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "This node's clock is 20" in done.stderr and "ahead of" in done.stderr
    assert "Traceback" not in done.stderr
