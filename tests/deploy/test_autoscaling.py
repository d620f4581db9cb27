"""The HorizontalPodAutoscaler's custom metric, end to end but for Kubernetes: the shipped
prometheus-adapter rule's metricsQuery, with its template rendered as the adapter renders it for
a pod selector, run on a real Prometheus scraping two real gateways (as two pods) under a slow
upstream, returns each pod's sessions in flight."""

from __future__ import annotations

from typing import Any

import aiohttp
import yaml

from gateway.sandbox.data import LpuKnobs
from tests.support import ROOT
from tests.support.gateway import create, patient
from tests.support.workload import serve_gateway, workload_config

ADAPTER = ROOT / "deploy" / "kubernetes" / "base" / "prometheus-adapter.yaml"
HPA = ROOT / "deploy" / "kubernetes" / "base" / "horizontalpodautoscaler.yaml"
NAMESPACE = "visit-gateway"
# Long enough that the hanging LPUs are still running when Prometheus is read.
DEADLINE = 60.0


def adapter_rule(metric: str) -> dict[str, Any]:
    config = yaml.safe_load(yaml.safe_load(ADAPTER.read_text())["data"]["config.yaml"])
    [rule] = [r for r in config["rules"] if r["name"]["as"] == metric]
    return rule


def render(rule: dict[str, Any], pods: list[str]) -> str:
    """What the adapter sends for GET …/namespaces/<ns>/pods/*/<metric>?labelSelector=… once the
    selector has matched `pods`: the series, the namespace and pod matchers, grouped by pod."""
    series = rule["seriesQuery"].split("{")[0]
    overrides = rule["resources"]["overrides"]
    matchers = f'{_label(overrides, "namespace")}="{NAMESPACE}",{_label(overrides, "pod")}=~"{"|".join(pods)}"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", _label(overrides, "pod"))
    )


def _label(overrides: dict[str, dict[str, str]], resource: str) -> str:
    [label] = [label for label, target in overrides.items() if target["resource"] == resource]
    return label


async def test_the_adapter_query_returns_each_pods_sessions_in_flight(upstream: Any, prometheus: Any) -> None:
    [metric] = [
        m["pods"]["metric"]["name"] for m in yaml.safe_load(HPA.read_text())["spec"]["metrics"] if m["type"] == "Pods"
    ]
    rule = adapter_rule(metric)
    # One patient per session (the reuse window would share one token's fan-out), each with an
    # LPU whose upstream never answers: the slow upstream that fills sessions in flight.
    hanging = [patient(None, LpuKnobs(fault="hang")) for _ in range(4)]
    _, url = await upstream(*hanging)
    config = workload_config(url, deadline=DEADLINE)
    async with serve_gateway(config) as a, serve_gateway(config) as b:
        pods = {"visit-gateway-5f7c-a": a, "visit-gateway-5f7c-b": b}
        labels = {
            gw.metrics_url.removeprefix("http://"): {"namespace": NAMESPACE, "pod": pod} for pod, gw in pods.items()
        }
        prom = await prometheus(list(labels), labels=labels)
        # Three slow sessions on pod a, one on pod b.
        for gw, sessions in ((a, hanging[:3]), (b, hanging[3:])):
            async with aiohttp.ClientSession(base_url=gw.url) as http:
                for p in sessions:
                    await create(http, p.token)
        expected = {"visit-gateway-5f7c-a": 3.0, "visit-gateway-5f7c-b": 1.0}

        query = render(rule, sorted(pods))
        assert query == (
            'sum by (pod) (gateway_sessions_in_flight{namespace="visit-gateway",'
            'pod=~"visit-gateway-5f7c-a|visit-gateway-5f7c-b"})'
        )

        def per_pod(result: list[dict[str, Any]]) -> dict[str, float]:
            return {s["metric"]["pod"]: float(s["value"][1]) for s in result}

        result = await prom.wait_for(query, lambda r: per_pod(r) == expected, within=20)
        # Grouped by pod only: what the adapter maps back to each pod object.
        assert all(set(s["metric"]) == {"pod"} for s in result)
        # A pod the selector did not match is not in the answer.
        only_b = await prom.query(render(rule, ["visit-gateway-5f7c-b"]))
        assert per_pod(only_b) == {"visit-gateway-5f7c-b": 1.0}
