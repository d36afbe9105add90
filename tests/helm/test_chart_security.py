"""The chart is secure by default (issue 16): a signed bus, a bundled Redis
with a password and a NetworkPolicy, probes the Ingress does not route, TLS
Redis with a mounted CA. Rendered offline by Helm's Go engine, as in
test_chart.py."""
from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helm.test_chart import CHART, RELEASE, SECRET_KEY, container, env_of, find, node, render

helm = pytest.importorskip("helm_python")

NODES = f"{RELEASE}-socketio-cluster"
REDIS = f"{RELEASE}-socketio-cluster-redis"


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def secret_data(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    data = find(objects, "Secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return container(find(objects, "Deployment", f"{NODES}-worker"), "worker")


def test_the_bus_is_signed_by_default_with_a_generated_secret(chart: Any) -> None:
    first, second = render(chart, SECRET_KEY), render(chart, SECRET_KEY)
    generated = secret_data(first, NODES)["signing-secret"]
    assert len(generated) == 48 and generated.isalnum()
    assert generated != secret_data(second, NODES)["signing-secret"]  # random, not well-known
    for c in (node(first), worker(first)):
        env = env_of(c)
        assert env["CLUSTER_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": NODES, "key": "signing-secret", "optional": False}
        assert "CLUSTER_ALLOW_UNSIGNED_BUS" not in env
    given = render(chart, {**SECRET_KEY, "signingSecret": "g" * 32})
    assert secret_data(given, NODES)["signing-secret"] == "g" * 32


def test_the_secrets_are_kept_across_upgrades_through_lookup(chart: Any, tmp_path: Path) -> None:
    # `lookup` finds nothing offline, so the helper that chooses between the
    # given, the existing and a new value is rendered with a stand-in for
    # the Secret an upgrade would find
    copy = tmp_path / "socketio-cluster"
    shutil.copytree(CHART, copy)
    kept = base64.b64encode(b"kept-from-the-last-release").decode()
    # %-formatting: the Go template's own braces would all need doubling in an f-string
    (copy / "templates" / "zz-kept.yaml").write_text(
        '{{- $old := dict "data" (dict "signing-secret" "%s") }}\n'  # noqa: UP031
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\n  labels: {}\ndata:\n"
        '  kept: {{ include "socketio-cluster.keptSecret" (dict "existing" $old "key" '
        '"signing-secret" "given" "" "length" 48) | quote }}\n'
        '  given: {{ include "socketio-cluster.keptSecret" (dict "existing" $old "key" '
        '"signing-secret" "given" "mine" "length" 48) | quote }}\n'
        '  fresh: {{ include "socketio-cluster.keptSecret" (dict "existing" (dict) "key" '
        '"signing-secret" "given" "" "length" 48) | quote }}\n' % kept)
    with helm.Chart.load(copy) as patched:
        data = find(render(patched, SECRET_KEY), "ConfigMap", "kept")["data"]
    assert data["kept"] == kept  # the release's value, unchanged
    assert base64.b64decode(data["given"]) == b"mine"  # a value given wins
    assert len(base64.b64decode(data["fresh"])) == 48
    # and both Secrets look themselves up by the names they are created under
    for template in ("secret.yaml", "redis-secret.yaml"):
        text = (CHART / "templates" / template).read_text()
        assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
        assert "socketio-cluster.keptSecret" in text


def test_an_unsigned_bus_is_an_explicit_opt_out(chart: Any) -> None:
    objects = render(chart, {**SECRET_KEY, "allowUnsignedBus": True})
    assert "signing-secret" not in secret_data(objects, NODES)
    for c in (node(objects), worker(objects)):
        env = env_of(c)
        assert env["CLUSTER_ALLOW_UNSIGNED_BUS"]["value"] == "1"
        assert env["CLUSTER_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_bundled_redis_has_a_generated_password(chart: Any) -> None:
    objects = render(chart, SECRET_KEY)
    password = secret_data(objects, REDIS)["redis-password"]
    assert len(password) == 32 and password.isalnum()
    redis = container(find(objects, "Deployment", REDIS), "redis")
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    ref = {"secretKeyRef": {"name": REDIS, "key": "redis-password"}}
    assert env_of(redis)["REDIS_PASSWORD"]["valueFrom"] == ref
    assert env_of(redis)["REDISCLI_AUTH"]["valueFrom"] == ref  # the readiness probe's redis-cli
    for c in (node(objects), worker(objects)):
        env = env_of(c)
        assert env["REDIS_PASSWORD"]["valueFrom"] == ref
        assert env["MESSAGE_QUEUE_URL"]["value"].startswith("redis://:$(REDIS_PASSWORD)@")
    given = render(chart, {**SECRET_KEY, "redis": {"enabled": True, "password": "p4ss-word"}})
    assert secret_data(given, REDIS)["redis-password"] == "p4ss-word"
    with pytest.raises(helm.HelmValuesError, match="/redis/password"):
        render(chart, {**SECRET_KEY, "redis": {"enabled": True, "password": "a@b/c"}})


def test_only_the_releases_pods_reach_the_bundled_redis(chart: Any) -> None:
    objects = render(chart, SECRET_KEY)
    policy = find(objects, "NetworkPolicy", REDIS)["spec"]
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] == "Deployment"}
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= pods[REDIS].items()
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    admitted = peer["podSelector"]["matchLabels"]
    assert admitted == {"app.kubernetes.io/name": "socketio-cluster",
                        "app.kubernetes.io/instance": RELEASE}
    assert admitted.items() <= pods[NODES].items()
    assert admitted.items() <= pods[f"{NODES}-worker"].items()
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    off = render(chart, {**SECRET_KEY,
                         "redis": {"enabled": True, "networkPolicy": {"enabled": False}}})
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]


def test_the_ingress_routes_no_probe_or_metrics_path(chart: Any) -> None:
    objects = render(chart, {**SECRET_KEY,
                             "ingress": {"enabled": True, "host": "chat.example.com"}})
    ingress = find(objects, "Ingress", NODES)
    (rule,) = ingress["spec"]["rules"]
    routes = {(p["path"], p["pathType"]): p["backend"]["service"]["name"]
              for p in rule["http"]["paths"]}
    assert routes == {("/healthz", "Exact"): f"{NODES}-unrouted",
                      ("/readyz", "Exact"): f"{NODES}-unrouted",
                      ("/metrics", "Exact"): f"{NODES}-unrouted", ("/", "Prefix"): NODES}
    unrouted = find(objects, "Service", f"{NODES}-unrouted")
    assert "selector" not in unrouted["spec"]  # no endpoints: nothing answers behind it
    # the affinity cookie, an option, is safe when switched on
    sticky = render(chart, {**SECRET_KEY, "ingress": {
        "enabled": True, "host": "chat.example.com", "nginxStickySessions": True}})
    annotations = find(sticky, "Ingress", NODES)["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-samesite"] == "Lax"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-secure"] == "false"
    tls = render(chart, {**SECRET_KEY, "ingress": {"enabled": True, "nginxStickySessions": True,
                                                   "tls": {"enabled": True, "secretName": "t"}}})
    assert find(tls, "Ingress", NODES)["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/session-cookie-secure"] == "true"


def test_a_tls_redis_gets_its_ca_mounted(chart: Any) -> None:
    url = ("rediss://app:pw@redis.example.com:6380/0"
           "?ssl_ca_certs=/etc/socketio-cluster/redis-ca/ca.crt")
    objects = render(chart, {**SECRET_KEY, "redis": {"enabled": False}, "externalRedis": {
        "url": url, "tls": {"caSecret": "redis-ca", "caKey": "tls-ca.pem"}}})
    for deployment in (NODES, f"{NODES}-worker"):
        pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        assert {"name": "redis-ca", "secret": {"secretName": "redis-ca", "items": [
            {"key": "tls-ca.pem", "path": "ca.crt"}]}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "redis-ca", "mountPath": "/etc/socketio-cluster/redis-ca",
                "readOnly": True} in mounts
    assert env_of(node(objects))["MESSAGE_QUEUE_URL"]["value"] == url
    plain = render(chart, SECRET_KEY)
    assert all(v["name"] != "redis-ca" for v in
               find(plain, "Deployment", NODES)["spec"]["template"]["spec"]["volumes"])
