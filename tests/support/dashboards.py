"""The repo's dashboards and alert rules as data: every panel query, Grafana variables
substituted the way Grafana would, and every metric name they use."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "prometheus" / "alerts.yml"
# The SLOs' recording rules and burn-rate alerts, generated from prometheus/slo.yml.
SLO_RULES = ROOT / "prometheus" / "slo_rules.yml"
RULE_FILES = (ALERTS, SLO_RULES)
# Every alert rule the repo ships, written out: a test that reads them from the file itself could
# not notice one going missing.
ALERT_NAMES = frozenset(
    {
        "GatewayStoreDown",
        "GatewayOldRoutesErrorRatioHigh",
        "GatewayTargetDown",
        "GatewayStoreNearFull",
        "GatewayFlagsFileInvalid",
        "GatewayLpuFailureRatioHigh",
        "GatewaySessionsHittingDeadline",
        "GatewayUpstreamErrorRateHigh",
        "GatewayRetiredAppCallingAgain",
        "GatewayGuardrailTripped",
        "GatewayOldPathTrafficDropped",
        "GatewayOldRoutesClientErrorStorm",
        "GatewayStoreRefusingWrites",
        "GatewayMemoryNearLimit",
        "GatewayRestarting",
        "GatewayBackgroundTaskFailing",
        "GatewayRedisSettingsUnsafe",
        "GatewayRequestsRejectedByLimits",
        "GatewayAvailabilityBudgetBurn",
        "GatewayAvailabilityBudgetSlowBurn",
        "GatewayTimeToFinalBudgetBurn",
        "GatewayTimeToFinalBudgetSlowBurn",
    }
)

_METRIC = re.compile(r"\bgateway_[a-z0-9_]+")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|count|sum)$")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(dashboard["title"], panel["title"], target["expr"], target.get("instant", False))
                )
    return queries


def substitute(expr: str, *, interval_s: int, scrape_s: int, range_s: int) -> str:
    """What Grafana sends for an expression: its built-in interval variables, and every
    template variable at its default "All" (allValue ".*")."""
    rate_interval = max(interval_s + scrape_s, 4 * scrape_s)
    expr = expr.replace("$__rate_interval", f"{rate_interval}s")
    expr = expr.replace("$__interval", f"{interval_s}s").replace("$__range", f"{range_s}s")
    return re.sub(r"\$\{?(cohort|instance)\}?", ".*", expr)


def metric_names(text: str) -> set[str]:
    """Metric names in PromQL text, histogram series folded to the histogram's name."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(text)}


def rules() -> list[dict]:
    """Every rule (alerting and recording) of the shipped rule files."""
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def used_metric_names() -> set[str]:
    exprs = "\n".join(q.expr for q in panel_queries())
    return metric_names(exprs) | {name for path in RULE_FILES for name in metric_names(path.read_text())}


def families(exposition: str) -> set[str]:
    """Family names as the text format's TYPE lines write them (a counter with its _total), less
    the `_created` timestamps prometheus_client writes beside counters and histograms."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))
    created = {name for name in types if name.endswith("_created") and types[name] == "gauge"}
    owners = {name.removesuffix("_total") for name, kind in types.items() if kind in ("counter", "histogram")}
    return set(types) - {name for name in created if name.removesuffix("_created") in owners}
