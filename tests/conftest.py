"""Fixtures live in tests/harness/ (real Redis, nodes, HAProxy, clients)."""

pytest_plugins = ["tests.harness.fixtures", "tests.harness.tls_redis",
                  "tests.harness.redis_cluster", "tests.harness.redis_cluster_replicas"]
