"""The Helm chart, rendered offline by Helm's own Go engine.

No helm binary and no cluster: ``helm-python-sdk`` binds Helm's Go SDK
(``libhelm_c``) and renders, lints and schema-checks the chart in process;
``kubernetes-validate`` checks every rendered manifest against the pinned
Kubernetes version's OpenAPI schemas in strict mode (unknown fields fail),
from schemas it ships, offline.

No cluster can run here, so what the chart runs is pinned to what
docker-compose.yml runs (and tests/deploy exercises for real): the image's
command, port 5000, /readyz and /healthz, the environment variable names.
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_MISSING = [name for name in ("helm_python", "kubernetes_validate")
            if importlib.util.find_spec(name) is None]
if _MISSING:
    # only a missing install skips: a present SDK that cannot load its
    # libhelm_c fails loudly below
    pytest.skip(f"not installed: {', '.join(_MISSING)} (helm-python-sdk, kubernetes-validate); "
                "pip install -e '.[test]'", allow_module_level=True)

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]

from cluster import runtime

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "socketio-cluster"
TEMPLATES = CHART / "templates"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: the Kubernetes version manifests are validated against (kubernetes-validate
#: ships its schemas; a release that no longer does fails loudly below)
KUBE_VERSION = "1.34.0"
RELEASE = "demo"
NAMESPACE = "chat"
SECRET_KEY = {"secretKey": "test-secret-key"}


# -- rendering ---------------------------------------------------------------

@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_templates(chart: helm.Chart, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Render the chart as `helm template` would: template file -> its objects."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: dict[str, list[dict[str, Any]]] = {}
    for path, text in rendered.items():
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        manifests[path.rsplit("/", 1)[-1]] = [doc for doc in yaml.safe_load_all(text) if doc]
    return manifests


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for docs in render_templates(chart, values).values() for doc in docs]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    present = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(matches) == 1, f"expected one {kind}/{name}, got {present}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def node(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return container(find(objects, "Deployment", f"{RELEASE}-socketio-cluster"), "node")


def ci_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


# -- what docker-compose.yml and the Dockerfile run -----------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def image_cmd() -> list[str]:
    (line,) = [text for text in (ROOT / "Dockerfile").read_text().splitlines()
                if text.startswith("CMD ")]
    cmd: list[str] = json.loads(line[len("CMD "):])
    return cmd


def compose_probe_path(service: dict[str, Any]) -> str:
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)",
                        " ".join(service["healthcheck"]["test"]))
    return url[1]


# -- every ci/*-values.yaml: lint, render, validate ---------------------------------

def test_ci_values_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "external-redis-values.yaml", "minimal-values.yaml"} <= names


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_lint_is_clean(values_file: Path) -> None:
    report = helm.lint(CHART, ci_values(values_file), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # severity 1 is "info" (e.g. "icon is recommended"); warnings fail
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_schemas(
    chart: helm.Chart, values_file: Path
) -> None:
    objects = render(chart, ci_values(values_file))
    assert objects
    for obj in objects:
        try:
            used = kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at "
                        f"{'/'.join(map(str, exc.path))}")
        assert used == KUBE_VERSION.rsplit(".", 1)[0], (
            "kubernetes-validate fell back to older schemas")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_one_resource_per_template_and_standard_labels(
    chart: helm.Chart, values_file: Path
) -> None:
    for template, docs in render_templates(chart, ci_values(values_file)).items():
        assert len(docs) <= 1, f"{template} renders {len(docs)} resources"
        for obj in docs:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "socketio-cluster"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"] == "0.1.0"
            assert labels["helm.sh/chart"] == "socketio-cluster-0.1.0"


def test_ci_values_render_every_template(chart: helm.Chart) -> None:
    rendered: set[str] = set()
    for values_file in CI_VALUES:
        templates = render_templates(chart, ci_values(values_file))
        rendered |= {t for t, docs in templates.items() if docs}
    assert rendered == {p.name for p in TEMPLATES.glob("*.yaml")}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_selectors_match_their_pods(chart: helm.Chart, values_file: Path) -> None:
    objects = render(chart, ci_values(values_file))
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] == "Deployment"}

    def selects(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods.items() if selector.items() <= labels.items()]

    for obj in objects:
        if obj["kind"] == "Deployment":
            assert selects(obj["spec"]["selector"]["matchLabels"]) == [obj["metadata"]["name"]]
        elif obj["kind"] == "Service" and obj["metadata"]["name"].endswith("-unrouted"):
            assert "selector" not in obj["spec"]  # no endpoints, on purpose
        elif obj["kind"] == "Service":
            assert len(selects(obj["spec"]["selector"])) == 1
        elif obj["kind"] == "NetworkPolicy":
            assert selects(obj["spec"]["podSelector"]["matchLabels"]) == [
                f"{RELEASE}-socketio-cluster-redis"]
        elif obj["kind"] == "PodDisruptionBudget":
            selected = selects(obj["spec"]["selector"]["matchLabels"])
            assert selected == [f"{RELEASE}-socketio-cluster"]


# -- the node runs what docker-compose.yml runs ---------------------------------------

def test_node_command_is_the_images(chart: helm.Chart, image_cmd: list[str]) -> None:
    c = node(render(chart, SECRET_KEY))
    assert c["command"] + c["args"] == image_cmd
    assert c["image"] == "socketio-cluster:0.1.0"  # compose: socketio-cluster:${IMAGE_TAG:-local}


def test_node_port_and_service(chart: helm.Chart) -> None:
    objects = render(chart, SECRET_KEY)
    assert node(objects)["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    service = find(objects, "Service", f"{RELEASE}-socketio-cluster")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 5000, "targetPort": "http",
                                         "protocol": "TCP"}]
    # no affinity by default: the nodes forward polling requests to the owner
    assert service["spec"]["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in service["spec"]
    env = {e["name"]: e for e in node(objects)["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["CLUSTER_ADVERTISE_URL"]["value"] == "http://$(POD_IP):5000"
    # ClientIP affinity stays an option
    sticky = find(render(chart, {**SECRET_KEY, "service": {"sessionAffinity": "ClientIP"}}),
                  "Service", f"{RELEASE}-socketio-cluster")
    assert sticky["spec"]["sessionAffinity"] == "ClientIP"
    assert sticky["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800


def test_node_probes_are_the_composes(chart: helm.Chart, compose: dict[str, Any]) -> None:
    c = node(render(chart, SECRET_KEY))
    assert compose_probe_path(compose["services"]["node1"]) == "/readyz"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # liveness must not follow Redis: /healthz, never /readyz
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_probes_are_whole_overridable_objects(chart: helm.Chart) -> None:
    # Helm merges maps, so swapping the handler nulls the default's
    tcp = {"httpGet": None, "tcpSocket": {"port": "http"}, "periodSeconds": 7}
    c = node(render(chart, {**SECRET_KEY, "livenessProbe": tcp, "startupProbe": None}))
    assert c["livenessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 7,
                                  "timeoutSeconds": 3, "failureThreshold": 3}
    assert "startupProbe" not in c


def test_node_environment_is_the_composes(chart: helm.Chart, compose: dict[str, Any]) -> None:
    env = env_of(node(render(chart, SECRET_KEY)))
    assert set(compose["services"]["node1"]["environment"]) <= set(env)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MESSAGE_QUEUE_URL"]["value"] == (
        f"redis://:$(REDIS_PASSWORD)@{RELEASE}-socketio-cluster-redis:6379/0")
    # Kubernetes expands $(REDIS_PASSWORD) only from a variable defined before
    names = [e["name"] for e in node(render(chart, SECRET_KEY))["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("MESSAGE_QUEUE_URL")
    assert env["SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-socketio-cluster", "key": "secret-key"}
    # required: a node without it refuses to start
    assert env["CLUSTER_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-socketio-cluster", "key": "signing-secret", "optional": False}
    assert "CLUSTER_ALLOW_UNSIGNED_BUS" not in env
    compose_env = compose["services"]["node1"]["environment"]
    assert env["CLUSTER_DRAIN_SECONDS"]["value"] == compose_env["CLUSTER_DRAIN_SECONDS"] == "10"
    assert env["CONNECTION_STATE_RECOVERY"]["value"] == "120"  # compose: ${...-120}


def test_async_mode_reaches_the_nodes_only(chart: helm.Chart, compose: dict[str, Any]) -> None:
    # the default is the runner's and the compose file's
    compose_env = compose["services"]["node1"]["environment"]
    assert compose_env["CLUSTER_ASYNC_MODE"] == f"${{CLUSTER_ASYNC_MODE:-{runtime.DEFAULT_MODE}}}"
    assert env_of(node(render(chart, SECRET_KEY)))["CLUSTER_ASYNC_MODE"] == {
        "name": "CLUSTER_ASYNC_MODE", "value": runtime.DEFAULT_MODE}
    objects = render(chart, {**SECRET_KEY, "asyncMode": "gevent"})
    assert env_of(node(objects))["CLUSTER_ASYNC_MODE"]["value"] == "gevent"
    # Celery workers never run a node: no runtime to choose
    worker = container(find(objects, "Deployment", f"{RELEASE}-socketio-cluster-worker"), "worker")
    assert "CLUSTER_ASYNC_MODE" not in env_of(worker)
    # the schema offers exactly the runtimes the runner knows
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["asyncMode"]["enum"] == list(runtime.MODES)


def test_limits_reach_the_runner_and_default_when_null(chart: helm.Chart,
                                                       compose: dict[str, Any]) -> None:
    env = env_of(node(render(chart, SECRET_KEY)))
    compose_env = compose["services"]["node1"]["environment"]
    names = [name for name in compose_env if name.startswith("CLUSTER_") and name not in (
        "CLUSTER_SIGNING_SECRET", "CLUSTER_DRAIN_SECONDS", "CLUSTER_ADVERTISE_URL",
        "CLUSTER_ASYNC_MODE")]
    assert len(names) == 9
    for name in names:  # empty: the runner's default, in both
        assert env[name]["value"] == "", name
        assert compose_env[name] == f"${{{name}:-}}"  # unset: empty
    env = env_of(node(render(chart, {**SECRET_KEY, "limits": {
        "maxBacklog": 4194304, "maxEventsPerSecond": 0, "connectTimeoutSeconds": 2.5,
        "writeWindowSeconds": 0.002}})))
    assert env["CLUSTER_MAX_BACKLOG"]["value"] == "4194304"  # not 4.194304e+06
    assert env["CLUSTER_MAX_EVENTS_PER_SECOND"]["value"] == "0"  # 0 switches it off
    assert env["CLUSTER_CONNECT_TIMEOUT"]["value"] == "2.5"
    assert env["CLUSTER_WRITE_WINDOW"]["value"] == "0.002"
    assert env["CLUSTER_MAX_ROOMS_PER_CONNECTION"]["value"] == ""


def test_ingress_limits_can_be_raised_or_left_out(chart: helm.Chart) -> None:
    def annotations(ingress: dict[str, Any]) -> dict[str, str]:
        objects = render(chart, {**SECRET_KEY, "ingress": {"enabled": True, **ingress}})
        found: dict[str, str] = find(objects, "Ingress", f"{RELEASE}-socketio-cluster")[
            "metadata"].get("annotations", {})
        return found

    raised = annotations({"limitConnections": 5000, "limitRps": 0,
                          "clientBodyTimeoutSeconds": 30, "proxyBodySize": "8m"})
    assert raised["nginx.ingress.kubernetes.io/limit-connections"] == "5000"
    assert raised["nginx.ingress.kubernetes.io/limit-rps"] == "0"  # ingress-nginx: off
    assert raised["nginx.ingress.kubernetes.io/client-body-timeout"] == "30"
    assert raised["nginx.ingress.kubernetes.io/proxy-body-size"] == "8m"
    left_out = annotations({"nginxLimits": False})
    assert not any("limit-" in key or "body" in key for key in left_out)
    with pytest.raises(helm.HelmValuesError, match="limitRps"):
        annotations({"limitRps": -1})
    env = env_of(node(render(chart, {**SECRET_KEY, "limits": {"httpBodyTimeoutSeconds": 12}})))
    assert env["CLUSTER_HTTP_BODY_TIMEOUT"]["value"] == "12"
    assert env_of(node(render(chart, SECRET_KEY)))["CLUSTER_HTTP_BODY_TIMEOUT"]["value"] == ""


def test_drain_fits_in_the_grace_period(chart: helm.Chart) -> None:
    objects = render(chart, SECRET_KEY)
    deployment = find(objects, "Deployment", f"{RELEASE}-socketio-cluster")
    c = node(objects)
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(env_of(c)["CLUSTER_DRAIN_SECONDS"]["value"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(sleep[1]) + drain
    # a new node is ready before an old one drains
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_too_short_grace_period_fails_with_the_fix(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds .* must exceed"):
        render(chart, {**SECRET_KEY, "terminationGracePeriodSeconds": 15})


def test_containers_are_locked_down(chart: helm.Chart) -> None:
    deployments = [o for o in render(chart, SECRET_KEY) if o["kind"] == "Deployment"]
    assert len(deployments) == 3  # nodes, worker, bundled Redis
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int)  # verifiable by the kubelet
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]


def test_worker_runs_what_compose_runs(chart: helm.Chart, compose: dict[str, Any]) -> None:
    objects = render(chart, SECRET_KEY)
    c = container(find(objects, "Deployment", f"{RELEASE}-socketio-cluster-worker"), "worker")
    assert c["command"] == ["python", "-m", "workers", "worker"]
    assert c["command"] + c["args"] == compose["services"]["worker"]["command"]
    # compose shares one environment anchor; only the nodes drain, serve
    # connections (their limits) and run on a green-thread runtime
    wanted = {name for name in compose["services"]["worker"]["environment"]
              if name not in ("CLUSTER_DRAIN_SECONDS", "CLUSTER_ASYNC_MODE")
              and not name.startswith(("CLUSTER_MAX_", "CLUSTER_CONNECT_", "CLUSTER_HTTP_",
                                       "CLUSTER_WRITE_"))}
    assert wanted <= set(env_of(c))
    assert "workers.celery_app" in " ".join(c["livenessProbe"]["exec"]["command"])


def test_bundled_redis_is_the_composes(chart: helm.Chart, compose: dict[str, Any]) -> None:
    objects = render(chart, SECRET_KEY)
    redis = container(find(objects, "Deployment", f"{RELEASE}-socketio-cluster-redis"), "redis")
    assert redis["image"] == "redis:7.2"
    assert compose["services"]["redis"]["image"] == "redis:${REDIS_TAG:-7.2}"
    # the compose file's Redis, plus a password: a Kubernetes network is shared
    assert redis["args"] == [*compose["services"]["redis"]["command"],
                             "--requirepass", "$(REDIS_PASSWORD)"]
    service = find(objects, "Service", f"{RELEASE}-socketio-cluster-redis")
    assert service["spec"]["ports"][0]["port"] == 6379


# -- values switch resources on and off --------------------------------------------

def test_existing_secret_removes_the_secret(chart: helm.Chart) -> None:
    values = {"existingSecret": "mine",
              "existingSecretKeys": {"secretKey": "flask", "signingSecret": "bus"}}
    objects = render(chart, values)
    # only the bundled Redis's password stays the chart's
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"] == [
        f"{RELEASE}-socketio-cluster-redis"]
    env = env_of(node(objects))
    assert env["SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "flask"}
    assert env["CLUSTER_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "mine", "key": "bus", "optional": False}
    with_chart_secret = render(chart, {**SECRET_KEY, "signingSecret": "s" * 16})
    secret = find(with_chart_secret, "Secret", f"{RELEASE}-socketio-cluster")
    assert set(secret["data"]) == {"secret-key", "signing-secret"}


def test_secret_change_rolls_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = find(render(chart, values), "Deployment", f"{RELEASE}-socketio-cluster")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/secret"]

    assert checksum(SECRET_KEY) != checksum({"secretKey": "another"})


def test_worker_disabled_removes_the_worker(chart: helm.Chart) -> None:
    on = kinds(render(chart, SECRET_KEY))
    off = kinds(render(chart, {**SECRET_KEY, "worker": {"enabled": False}}))
    assert on - off == {("Deployment", f"{RELEASE}-socketio-cluster-worker")}


def test_external_redis_replaces_the_bundled_one(chart: helm.Chart) -> None:
    url = "rediss://:pw@redis.example.com:6380/0"
    objects = render(chart, {**SECRET_KEY, "redis": {"enabled": False},
                             "externalRedis": {"url": url}})
    assert not [o for o in objects if o["metadata"]["name"].endswith("-redis")]
    assert env_of(node(objects))["MESSAGE_QUEUE_URL"] == {"name": "MESSAGE_QUEUE_URL", "value": url}
    from_secret = render(chart, {**SECRET_KEY, "redis": {"enabled": False},
                                 "externalRedis": {"existingSecret": "bus",
                                                   "existingSecretKey": "url"}})
    assert env_of(node(from_secret))["MESSAGE_QUEUE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "bus", "key": "url"}}


def test_recovery_off_empties_the_variable(chart: helm.Chart) -> None:
    objects = render(chart, {**SECRET_KEY, "connectionStateRecovery": {"enabled": False}})
    # as compose's CONNECTION_STATE_RECOVERY="": the runner reads empty as off
    assert env_of(node(objects))["CONNECTION_STATE_RECOVERY"]["value"] == ""


def test_autoscaling_owns_the_replica_count(chart: helm.Chart) -> None:
    objects = render(chart, {**SECRET_KEY, "autoscaling": {"enabled": True}})
    hpa = find(objects, "HorizontalPodAutoscaler", f"{RELEASE}-socketio-cluster")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-socketio-cluster"
    assert "replicas" not in find(objects, "Deployment", f"{RELEASE}-socketio-cluster")["spec"]
    assert not [o for o in render(chart, SECRET_KEY) if o["kind"] == "HorizontalPodAutoscaler"]


def test_ingress_is_off_by_default_and_sticky_only_as_an_option(chart: helm.Chart) -> None:
    assert not [o for o in render(chart, SECRET_KEY) if o["kind"] == "Ingress"]
    plain = find(render(chart, {**SECRET_KEY, "ingress": {"enabled": True}}), "Ingress",
                 f"{RELEASE}-socketio-cluster")["metadata"]["annotations"]
    assert not [k for k in plain if "affinity" in k or "session-cookie" in k]
    assert int(plain["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    objects = render(chart, {**SECRET_KEY, "ingress": {
        "enabled": True, "host": "chat.example.com", "nginxStickySessions": True,
        "annotations": {"x/y": "z"}}})
    ingress = find(objects, "Ingress", f"{RELEASE}-socketio-cluster")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert annotations["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert annotations["x/y"] == "z"
    # per-client limits and a buffered, bounded request body (the shipped
    # HAProxy config's protections)
    assert annotations["nginx.ingress.kubernetes.io/limit-connections"] == "200"
    assert annotations["nginx.ingress.kubernetes.io/limit-rps"] == "200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    assert annotations["nginx.ingress.kubernetes.io/client-body-timeout"] == "10"
    assert annotations["nginx.ingress.kubernetes.io/client-header-timeout"] == "10"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "chat.example.com"
    assert rule["http"]["paths"][-1]["backend"]["service"] == {
        "name": f"{RELEASE}-socketio-cluster", "port": {"name": "http"}}


# -- values.schema.json ------------------------------------------------------------

@pytest.mark.parametrize(("values", "complaint"), [
    ({**SECRET_KEY, "replicaCount": "two"}, "/replicaCount"),
    ({}, "/secretKey"),
    ({"secretKey": ""}, "/secretKey"),
    ({**SECRET_KEY, "replicaCount": -1}, "/replicaCount"),
    ({**SECRET_KEY, "signingSecret": "too-short"}, "/signingSecret"),
    ({**SECRET_KEY, "redis": {"enabled": False}}, "/externalRedis"),
    ({**SECRET_KEY, "redis": {"enabled": False}, "externalRedis": {"url": "http://x"}},
     "/externalRedis/url"),
    ({**SECRET_KEY, "service": {"type": "ExternalName"}}, "/service/type"),
    ({**SECRET_KEY, "image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({**SECRET_KEY, "app": "no-attribute"}, "/app"),
    ({**SECRET_KEY, "asyncMode": "threading"}, "/asyncMode"),
    ({**SECRET_KEY, "worker": {"pool": "gevent"}}, "/worker/pool"),
    ({**SECRET_KEY, "replicaCuont": 3}, "replicaCuont"),
    ({**SECRET_KEY, "limits": {"maxBacklog": 10}}, "/limits/maxBacklog"),
    ({**SECRET_KEY, "limits": {"writeWindowSeconds": 2}}, "/limits/writeWindowSeconds"),
    ({**SECRET_KEY, "limits": {"maxEvents": 10}}, "maxEvents"),
    ({**SECRET_KEY, "messageQueue": {"redisPartitions": 0}}, "/messageQueue/redisPartitions"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(chart, values)


def test_schema_is_draft_07_and_accepts_the_ci_values(chart: helm.Chart) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    for values_file in CI_VALUES:
        jsonschema.Draft7Validator(schema).validate(chart.merge_values(ci_values(values_file)))


def test_existing_secret_makes_secret_key_optional(chart: helm.Chart) -> None:
    chart.validate_schema(chart.merge_values({"existingSecret": "mine"}))


# -- chart conventions -------------------------------------------------------------

def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "socketio-cluster"
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None
    assert meta["appVersion"] == version.group(1)


def test_helpers_are_namespaced() -> None:
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    defined = re.findall(r'define "([^"]+)"', helpers)
    assert {"socketio-cluster.fullname", "socketio-cluster.labels",
            "socketio-cluster.selectorLabels"} <= set(defined)
    assert all(name.startswith("socketio-cluster.") for name in defined)


def _owned_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Maps whose keys the chart defines (closed in the schema), as dotted paths."""
    owned = {prefix} if schema.get("additionalProperties") is False else set()
    for key, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict):
            owned |= _owned_paths(sub, f"{prefix}.{key}" if prefix else key)
    return owned


def test_values_are_camel_case_and_documented_by_name() -> None:
    """Helm's conventions: camelCase keys, each comment starting with the key."""
    owned = _owned_paths(json.loads((CHART / "values.schema.json").read_text()))
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    checked = 0
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^( *)([^\s:#-][^:]*):", line)
        if not match:
            comment = [] if not stripped else comment
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = ".".join(k for _, k in stack)
        path = f"{parent}.{key}" if parent else key
        stack.append((indent, key))
        if parent in owned:
            checked += 1
            assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{path} is not camelCase"
            assert comment and comment[0].startswith(f"# {path} "), (
                f"{path}: comment must start with its name")
        comment = []
    assert checked > 50


def test_templates_hold_one_kind_each() -> None:
    for template in TEMPLATES.glob("*.yaml"):
        assert len(re.findall(r"^kind: ", template.read_text(), re.MULTILINE)) == 1, template.name


def test_redis_partitions_reach_the_nodes_and_the_worker_alike(chart: helm.Chart) -> None:
    default = render(chart, SECRET_KEY)
    assert "CLUSTER_REDIS_PARTITIONS" not in env_of(node(default))  # 1: one slot
    values = {**SECRET_KEY, "messageQueue": {"redisPartitions": 6},
              "connectionStateRecovery": {"enabled": False}}
    objects = render(chart, values)
    worker = container(find(objects, "Deployment", f"{RELEASE}-socketio-cluster-worker"),
                       "worker")
    # a room's channel is named after the count: every process the same
    for c in (node(objects), worker):
        assert env_of(c)["CLUSTER_REDIS_PARTITIONS"]["value"] == "6"
    with pytest.raises(helm.HelmRenderError, match="connectionStateRecovery.enabled=false"):
        render(chart, {**SECRET_KEY, "messageQueue": {"redisPartitions": 6}})
