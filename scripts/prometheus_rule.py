"""Writes deploy/kubernetes/base/prometheusrule.yaml from prometheus/alerts.yml, so that the
Prometheus Operator's copy of the alert rules cannot drift from the ones promtool tests.

    .venv/bin/python scripts/prometheus_rule.py           # rewrite the PrometheusRule
    .venv/bin/python scripts/prometheus_rule.py --check   # exit 1 if it is not what alerts.yml gives

tests/deploy/test_kubernetes.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from prometheus/alerts.yml by scripts/prometheus_rule.py: edit alerts.yml and rerun it\n"
    "# (tests/deploy/test_kubernetes.py fails while the two differ).\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as alerts.yml writes them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule (monitoring.coreos.com/v1) holding alerts.yml's groups unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "visit-gateway"},
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_text: str) -> str:
    rule = prometheus_rule(yaml.safe_load(alerts_text))
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render(ALERTS.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run scripts/prometheus_rule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
