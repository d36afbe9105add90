"""``python -m tests.faults.skewed_clock node ARGS``: ``python -m cluster node
ARGS`` with the wall clock shifted by ``FAULT_CLOCK_SHIFT`` seconds.

The stand-in for libfaketime (Debian ``faketime``) when it is not installed:
it shifts ``time.time`` and ``time.time_ns``, which every wall-clock stamp of
the product reads (the signed envelope's ``ts``, lag, leases); monotonic
clocks stay true, as with ``DONT_FAKE_MONOTONIC=1``. Redis keeps the true
time, as a skewed host's Redis server would.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

shift = float(os.environ.get("FAULT_CLOCK_SHIFT", "0"))
true_time, true_time_ns = time.time, time.time_ns
time.time = lambda: true_time() + shift
time.time_ns = lambda: true_time_ns() + int(shift * 1e9)
sys.argv[0] = "cluster"
runpy.run_module("cluster", run_name="__main__", alter_sys=True)
