"""The Grafana folder: two well-formed dashboards and the provisioning that loads them with no
clicks. (That every panel query returns data is test_prometheus.py's job.)"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from tests.support.dashboards import DASHBOARDS, load, panel_queries

GRAFANA = ROOT / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = {"__rate_interval", "__interval", "__range"}


def test_provisioning_loads_both_dashboards_and_the_datasource() -> None:
    # Grafana is pointed at grafana/ (GF_PATHS_PROVISIONING) and expands the variable itself.
    [provider] = yaml.safe_load((GRAFANA / "dashboards" / "visit-gateway.yml").read_text())["providers"]
    assert provider["type"] == "file"
    path = Path(provider["options"]["path"].replace("${GF_PATHS_PROVISIONING}", str(GRAFANA)))
    assert sorted(path.glob("*.json")) == DASHBOARDS
    assert [load(p)["title"] for p in DASHBOARDS] == ["visit-gateway: Gateway", "visit-gateway: Migration"]

    [datasource] = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    for dashboard in map(load, DASHBOARDS):
        variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
        assert variable["type"] == "datasource" and variable["query"] == "prometheus"
        assert variable["current"]["value"] == datasource["uid"], "dashboards open on the provisioned datasource"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    boxes = []
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        boxes.append((panel["title"], pos))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        assert all(t["datasource"] == DATASOURCE and t["expr"].strip() for t in panel["targets"]), panel["title"]
    for (a, p), (b, q) in itertools.combinations(boxes, 2):
        apart = (
            p["x"] + p["w"] <= q["x"]
            or q["x"] + q["w"] <= p["x"]
            or p["y"] + p["h"] <= q["y"]
            or q["y"] + q["h"] <= p["y"]
        )
        assert apart, f"{a!r} overlaps {b!r}"
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for query in panel_queries():
        if query.dashboard == dashboard["title"]:
            # `$1` is label_replace's capture group, not a variable (Grafana leaves it alone).
            used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", query.expr))
            assert used <= BUILTINS | defined, f"undefined variable in {query}"


def test_dashboards_have_the_panels_the_team_asked_for() -> None:
    titles = {(q.dashboard, q.panel) for q in panel_queries()}
    migration = {
        "Old-path requests by app",
        "Old-path requests by cohort",
        "Share served by each side",
        "Cohorts still calling: last seen",
        "Shadow match rate",
    }
    gateway = {
        "Requests by route",
        "Server error ratio (5xx)",
        "Request duration p50 / p95 / p99",
        "Time to complete p50 / p95 / p99",
        "Upstream latency p95 by method",
        "Upstream failures by method and outcome",
        "LPU failure ratio",
        "Store hit ratio",
        "Sessions in flight",
    }
    assert {("visit-gateway: Migration", t) for t in migration} <= titles
    assert {("visit-gateway: Gateway", t) for t in gateway} <= titles
