"""Helpers the tests share, importable as `tests.support.*` (never through conftest):

- `gateway`: tokens, patients, the old-path calls (create, poll until final), metric samples
  and the one bounded wait;
- real servers on loopback: `redis_server`, `prometheus_server`, `replicas` (gateway processes),
  `fake_legacy` (a legacy service), `faultnet` (proxies that cut a connection or hold
  one reply);
- `rawhttp` (requests the client library would refuse to send), `netutil` (free ports),
  `kubernetes` (the rendered manifests and the configuration a pod starts with),
  `workload` (a scripted old-path workload), `dashboards` (the Grafana panels' queries).
"""

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def golden(name: str) -> Any:
    """A golden sample of tests/golden, parsed (the seed's JSON examples, repaired: see there)."""
    return json.loads((GOLDEN / name).read_text())
