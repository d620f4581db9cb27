"""docs/migration.md is the code's: every [migration] key in its table, every brownout outcome,
metric and flags-file key named, and its header example is what the gateway sends."""

from __future__ import annotations

import dataclasses
import re

from gateway.cohorts import Cohort
from gateway.config import MigrationConfig
from gateway.migration.brownout import OUTCOMES
from gateway.migration.signals import BROWNOUT_KEYS, DEPRECATION_KEYS, TABLE_KEYS
from gateway.observability.metrics import Metrics
from gateway.rollout.flags import parse_flags
from tests.support import ROOT

RUNBOOK = (ROOT / "docs" / "migration.md").read_text()


def test_every_migration_config_key_is_in_the_reference_table() -> None:
    reference = RUNBOOK.partition("## Reference")[2]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", reference, re.M))
    assert documented == {f.name for f in dataclasses.fields(MigrationConfig)}


def test_outcomes_metrics_and_flags_keys_are_named() -> None:
    for outcome in OUTCOMES:
        assert f"`{outcome}`" in RUNBOOK, outcome
    names = {m.name for m in Metrics().registry.collect()}
    for metric in ("gateway_migration_since_last_seen_seconds", "gateway_brownout_decisions"):
        assert metric in RUNBOOK and (metric in names or metric.removesuffix("_total") in names)
    for key in {*TABLE_KEYS, *DEPRECATION_KEYS, *BROWNOUT_KEYS}:
        assert re.search(rf"\b{key}\b", RUNBOOK), key


def test_the_announcement_example_is_what_the_gateway_sends() -> None:
    [toml] = re.findall(r"## Step 2: announce.*?```toml\n(.*?)```", RUNBOOK, re.S)
    [example] = re.findall(r"carries, the first matching entry winning:\n\n```\n(.*?)```", RUNBOOK, re.S)
    headers = parse_flags(toml.encode(), "legacy").migration.headers_for(Cohort("beta", "ios", "4.9"))
    assert "".join(f"{name}: {value}\n" for name, value in headers) == example


def test_the_example_flags_files_migration_table_is_valid_once_uncommented() -> None:
    text = (ROOT / "config" / "rollout.example.toml").read_text()
    block = text[text.index("# [migration]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines() if line.startswith("# "))
    # A complete flags file around it: the required `version`, a final newline.
    migration = parse_flags(f"version = 1\n{uncommented}\n".encode(), "legacy").migration
    assert [[str(s) for s in d.cohorts] for d in migration.deprecations] == [["beta/*/4.9"]]
    assert [(b.name, b.mode, b.share) for b in migration.brownouts] == [("beta-first", "dry_run", 0.25)]
