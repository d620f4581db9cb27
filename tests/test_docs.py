"""The docs' tables are the code's: error codes, config keys and their environment names, metrics,
the sandbox patients; the README fits on a few screens and every link goes somewhere. Each list
is derived from the code, so a key or metric added without its line fails here."""

from __future__ import annotations

import re

import yaml

from gateway.config import CONFIG_FILE_ENV, SERVICE_LINK, Config, config_keys, env_names
from gateway.contract import ERRORS
from gateway.observability.metrics import Metrics
from gateway.sandbox.data import demo_patients
from tests.support import ROOT

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
METRICS = (DOCS / "metrics.md").read_text()


def _table_names(text: str, pattern: str) -> set[str]:
    """Backticked names in the first cell of table rows (several per cell allowed)."""
    names: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", text, re.M):
        names |= set(re.findall(rf"`({pattern})`", cell))
    return names


def test_readme_fits_on_a_few_screens() -> None:
    assert len(README.splitlines()) <= 250


def test_message_code_table_matches_the_error_catalog() -> None:
    rows = set(re.findall(r"^\| (\d{3}) \| (\d{4}) \| ([^|]+?) \|", README, re.M))
    assert rows == {(str(k.status), k.message_code, k.message) for k in ERRORS.values()}


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    keys = {f"{section}.{f.name}" for section, f in config_keys()}
    assert _table_names(CONFIGURATION, r"[a-z]+\.[a-z_]+") == keys


def test_every_environment_name_is_documented_and_every_documented_name_exists() -> None:
    names = set(env_names())
    documented = set(re.findall(r"`(GATEWAY_[A-Z_]+)`", CONFIGURATION))
    assert names <= documented, f"not in docs/configuration.md: {sorted(names - documented)}"
    anywhere = "\n".join([README, *(p.read_text() for p in DOCS.glob("*.md"))])
    # The example of the error for a mistyped name is meant not to exist.
    anywhere = re.sub(r"unknown environment variable GATEWAY_\w+", "", anywhere)
    unknown = set(re.findall(r"\b(GATEWAY_[A-Z_]*[A-Z])\b", anywhere)) - names - {CONFIG_FILE_ENV}
    unknown = {name for name in unknown if not SERVICE_LINK.fullmatch(name)}  # what Kubernetes injects
    assert not unknown, f"documented environment names that no key has: {sorted(unknown)}"


def test_key_rows_name_the_keys_environment_names_and_defaults() -> None:
    names = env_names()
    for row in re.findall(r"^\| `([a-z]+\.[a-z_]+)` \| (.*?) \| `(.*?)` \|", CONFIGURATION, re.M):
        key, env, default = row
        section, name = key.split(".")
        assert {n for n, target in names.items() if target == (section, name)} == set(
            re.findall(r"`(GATEWAY_[A-Z_]+)`", env)
        ), key
        value = getattr(getattr(Config(), section), name)
        assert default == _as_toml(value), key


def _as_toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        # A table's entries are in config/defaults.toml; the reference says only whether it has any.
        return "{...}" if value else "{}"
    if isinstance(value, tuple):
        assert not value, "a non-empty list default needs its own rendering here"
        return "[]"
    return repr(value)


def _exposed_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    exposed = _exposed_metric_names()
    documented = _table_names(METRICS, r"(?:gateway|process|python)_[a-z_]+")
    assert exposed - documented == set(), "metrics missing from docs/metrics.md"
    assert documented - exposed == set(), "docs/metrics.md names metrics the code does not have"


def test_the_alert_table_is_the_alert_rules() -> None:
    alerts = {
        rule["alert"]
        for name in ("alerts.yml", "slo_rules.yml")
        for group in yaml.safe_load((ROOT / "prometheus" / name).read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert _table_names(METRICS, r"Gateway[A-Za-z]+") == alerts


def test_the_sandbox_table_is_the_sandboxs_patients() -> None:
    rows = dict(re.findall(r"^\| `(sandbox-[a-z0-9-]+)` \| (\d+) \|", README, re.M))
    assert rows == {p.token: str(len(p.lpus)) for p in demo_patients()}


def _anchor(heading: str) -> str:
    # GitHub's: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_goes_somewhere() -> None:
    broken = []
    for doc in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # another site
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            if not resolved.is_relative_to(ROOT):
                continue  # outside the repo (the shared contract)
            if not resolved.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken
