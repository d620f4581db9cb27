"""Helpers the tests share, importable as `tests.support.*` (never through conftest):

- `gateway`: tokens, patients, the old-path calls (create, poll until final), metric samples
  and the one bounded wait;
- real servers on loopback: `redis_server`, `prometheus_server`, `replicas` (gateway processes),
  `fake_legacy` (a legacy service), `faultnet` (proxies that cut a connection or hold
  one reply);
- `rawhttp` (requests the client library would refuse to send), `netutil` (free ports),
  `kubernetes` (the rendered manifests and the configuration a pod starts with),
  `workload` (a scripted old-path workload), `dashboards` (the Grafana panels' queries);
- `haproxy` and `chaos` (`make chaos`: HAProxy, the replicas, Redis with Sentinel, the faults).
"""

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def golden(name: str) -> Any:
    """A golden sample of tests/golden, parsed (the seed's JSON examples, repaired: see there)."""
    return json.loads((GOLDEN / name).read_text())


def terminate(proc: subprocess.Popen[Any], within: float = 10.0) -> None:
    """SIGTERM, as an orchestrator stops a process; SIGKILL if it is still there after `within`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=within)
