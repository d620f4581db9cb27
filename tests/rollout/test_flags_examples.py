"""Every documented flags-file example loads with the real parser: the docs' TOML blocks (and the
flags files their shell examples write), config/rollout.example.toml with its commented tables
uncommented, and the deploy/ flags files. A doc block that is a fragment (a table alone, without
the required `version`) is rendered into a complete file first. The config examples the
cohorts are built from load with the config loader, and their cohorts are the ones the docs name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.cohorts import ClientTable, Cohort
from gateway.config import load_config
from gateway.migration.signals import TABLE_KEYS
from gateway.rollout.flags import FILE_KEYS, LEGACY, Flags, parse_flags
from tests.support import ROOT

# A block with other top-level or [migration] keys than a flags file's is a config example.
FLAGS_KEYS = set(FILE_KEYS)
FLAGS_MIGRATION_KEYS = set(TABLE_KEYS)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path: Path) -> list[str]:
    text = path.read_text()
    found = re.findall(r"```toml\n(.*?)```", text, re.S)
    # A shell example that writes a flags file: its here-document.
    found += re.findall(r"<<'TOML'\n(.*?\n)TOML\n", text, re.S)
    return found


def _is_flags(block: str) -> bool:
    data = tomllib.loads(block)
    if not set(data) <= FLAGS_KEYS:
        return False
    return set(data.get("migration", {})) <= FLAGS_MIGRATION_KEYS


def render(block: str) -> str:
    """A complete flags file around a documented block: `version` as its last plain key (right
    before the first table) when the block has none, and the final newline."""
    if "version" in tomllib.loads(block):
        return block if block.endswith("\n") else block + "\n"
    lines = block.splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    return "\n".join([*lines[:first_table], 'version = "docs"', *lines[first_table:]]) + "\n"


DOCUMENTED = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in DOCS
    for i, block in enumerate(_blocks(path))
    if _is_flags(block)
]


def test_the_docs_have_flags_examples_of_every_kind() -> None:
    kinds = set()
    for param in DOCUMENTED:
        data = tomllib.loads(param.values[0])
        kinds |= set(data) | {f"migration.{k}" for k in data.get("migration", {})}
    assert {"allow_cohorts", "deny_cohorts", "guardrails", "migration.deprecation", "migration.brownout"} <= kinds


@pytest.mark.parametrize("block", DOCUMENTED)
def test_every_documented_flags_example_loads(block: str) -> None:
    flags = parse_flags(render(block).encode(), LEGACY)
    assert isinstance(flags, Flags)


def _uncommented(text: str) -> str:
    """The example file with its commented-out tables (`# [guardrails.step_up]`, `# [migration]`
    and what follows them) taken in, as an operator turning them on would."""
    lines = []
    for line in text.splitlines():
        if re.match(r"# \[|# [a-z_]+ = |# \[\[", line):
            line = line.removeprefix("# ")
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_example_flags_file_loads_as_shipped_and_with_every_table_turned_on() -> None:
    text = (ROOT / "config" / "rollout.example.toml").read_text()
    shipped = parse_flags(text.encode(), LEGACY)
    assert [str(s) for s in shipped.allow_cohorts] == ["android/*/*"]
    full = parse_flags(_uncommented(text).encode(), LEGACY)
    assert full.guardrails.step_up is not None
    assert [[str(s) for s in d.cohorts] for d in full.migration.deprecations] == [["beta/*/4.9"]]
    assert [[str(s) for s in b.cohorts] for b in full.migration.brownouts] == [["beta/*/*"]]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "deploy").rglob("flags.toml")), ids=lambda p: str(p.relative_to(ROOT / "deploy"))
)
def test_every_deploy_flags_file_loads(path: Path) -> None:
    assert parse_flags(path.read_bytes(), LEGACY).version


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "config").glob("*.toml")) if p.name != "rollout.example.toml"],
    ids=lambda p: p.name,
)
def test_the_config_examples_load_and_name_cohorts_in_the_one_form(path: Path) -> None:
    config = load_config(env={}, path=path)
    table = ClientTable(config.clients, config.migration.platforms)
    for cohort in table.cohorts:
        assert Cohort.parse(str(cohort)) == cohort
    assert str(table.classify(None, None)) == "unknown/unknown/unknown"
