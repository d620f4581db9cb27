"""Writes the rule files that are generated, so that none can drift from its source:

- prometheus/slo_rules.yml from prometheus/slo.yml (the SLOs' recording rules and burn-rate
  alerts, scripts/slo_rules.py);
- every `runbook_url` in prometheus/alerts.yml and the rule unit tests on slo.yml's `runbook_base`;
- deploy/kubernetes/base/prometheusrule.yaml, the Prometheus Operator's copy of alerts.yml's and
  slo_rules.yml's groups, unchanged.

    .venv/bin/python scripts/prometheus_rule.py           # rewrite them
    .venv/bin/python scripts/prometheus_rule.py --check   # exit 1 if one is not what its source gives

tests/deploy/test_kubernetes.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slo_rules import slo_rules, with_runbook_base

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
SLO = PROMETHEUS / "slo.yml"
SLO_RULES = PROMETHEUS / "slo_rules.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from prometheus/alerts.yml and prometheus/slo_rules.yml by scripts/prometheus_rule.py:\n"
    "# edit alerts.yml or slo.yml and rerun it (tests/deploy/test_kubernetes.py fails while they differ).\n"
)
SLO_HEADER = (
    "# Generated from prometheus/slo.yml by scripts/prometheus_rule.py: edit slo.yml and rerun it\n"
    "# (tests/deploy/test_kubernetes.py fails while the two differ). Unit tests: slo_rules_test.yml;\n"
    "# what each rule means: docs/slo.md.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as alerts.yml writes them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)


def prometheus_rule(*rule_files: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule (monitoring.coreos.com/v1) holding the rule files' groups unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "visit-gateway"},
        "spec": {"groups": [group for rules in rule_files for group in rules["groups"]]},
    }


def render(alerts_text: str, slo_rules_text: str) -> str:
    rule = prometheus_rule(yaml.safe_load(alerts_text), yaml.safe_load(slo_rules_text))
    return HEADER + dump(rule)


def outputs() -> dict[Path, str]:
    """Every generated file and the text it should have."""
    slo = yaml.safe_load(SLO.read_text())
    base = slo["runbook_base"]
    files = {SLO_RULES: SLO_HEADER + dump(slo_rules(slo))}
    for path in [ALERTS, *sorted(PROMETHEUS.glob("*_test.yml"))]:
        files[path] = with_runbook_base(path.read_text(), base)
    files[TARGET] = render(files[ALERTS], files[SLO_RULES])
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}: run scripts/prometheus_rule.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
