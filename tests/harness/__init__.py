"""The integration-test harness: real redis-server, node processes, HAProxy, clients.

Registered as a pytest plugin by ``tests/conftest.py``
(``pytest_plugins = ["tests.harness.fixtures"]``); see
:mod:`tests.harness.fixtures` for the fixtures. The processes themselves are
:mod:`cluster.devtools.local_cluster`'s, so tests exercise the same code as
``python -m cluster.devtools up``. :mod:`tests.harness.tls_redis` (a plugin too)
adds a TLS-only ``redis-server`` with an ACL user.
"""
