"""The docs' tables are the code's: error codes, config keys and their environment names, metrics,
the sandbox patients and faults, the LPU failure reasons; every number a doc states about the
code is derived from it or checked against it (defaults, grace periods, sizes quoted twice); the
README fits on a few screens, every link resolves inside the clone and every section a file cites
exists. Each list is derived from the code, so a key or metric added without its line fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config import (
    CONFIG_FILE_ENV,
    SERVICE_LINK,
    SESSION_MEMORY_KIB,
    Config,
    config_keys,
    env_names,
    load_config,
    store_memory_mib,
)
from gateway.contract import ERRORS, LPU_FAILURE_REASONS
from gateway.observability.metrics import Metrics
from gateway.sandbox.data import FAULTS, demo_patients
from tests.support import GOLDEN, ROOT
from tests.support.kubernetes import GRACE_MARGIN, KUBERNETES, container, grace_seconds, objects

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
METRICS = (DOCS / "metrics.md").read_text()
SIZING = (DOCS / "sizing.md").read_text()
# What is not the project's text: installed packages, caches, build output.
NOT_OURS = {".git", ".venv", ".cache", "node_modules", "visit_gateway.egg-info", "__pycache__", ".pytest_cache"}
TEXT_SUFFIXES = {".md", ".py", ".toml", ".yml", ".yaml", ".json", ".sh", ".txt"}


def _ours(*suffixes: str) -> list[Path]:
    """The repository's own files with these suffixes (or every text suffix), wherever they are."""
    wanted = set(suffixes) or TEXT_SUFFIXES
    return sorted(
        p
        for p in ROOT.rglob("*")
        if p.suffix in wanted and p.is_file() and not NOT_OURS & set(p.relative_to(ROOT).parts)
    )


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _headings(doc: Path) -> set[str]:
    """A doc's headings, outside code blocks."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    return {h.strip() for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _sections(doc: Path) -> set[str]:
    """What a citation may name: the headings and the bold run-in headings (`**Loop time.** ...`
    at a line's start, with or without their parenthesised tail)."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    run_in = {re.sub(r"[.:]$", "", h.strip()) for h in re.findall(r"^\*\*([^*]+)\*\*", text, re.M)}
    return {_plain(h) for h in _headings(doc) | run_in} | {_plain(re.sub(r" \(.*\)$", "", h)) for h in run_in}


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


def test_every_relative_link_resolves_inside_the_clone() -> None:
    broken = []
    for doc in _ours(".md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # another site
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            name = doc.relative_to(ROOT)
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{name}: {target} (outside the repository: dead in a clone)")
            elif not resolved.exists():
                broken.append(f"{name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in {_anchor(h) for h in _headings(resolved)}:
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, broken


def _plain(heading: str) -> str:
    return heading.replace("`", "").strip()


def test_every_section_a_file_cites_exists() -> None:
    # The one citation form in comments and docs: a doc's path (or README), a comma (or 's), and a
    # quoted section name.
    cited = re.compile(r"\b((?:docs/)?[\w-]+\.md|README)(?:'s|,) \"([^\"]+)\"")
    missing = []
    for path in _ours():
        for doc, section in cited.findall(path.read_text(errors="replace")):
            target = ROOT / "README.md" if doc == "README" else DOCS / Path(doc).name
            if not target.exists() or _plain(section) not in _sections(target):
                missing.append(f"{path.relative_to(ROOT)}: {doc}, {section!r}")
    assert not missing, missing


def test_contract_sections_cited_by_number_exist_and_its_golden_samples_are_the_tests() -> None:
    contract = DOCS / "contract.md"
    numbered = {m for h in _headings(contract) for m in re.findall(r"^§(\w+) ", h)}
    assert {"1", "2", "3", "A", "B"} <= numbered
    cited = set()
    for path in _ours():
        cited |= set(re.findall(r"(?:old-api|upstream-api)\.md §(\w+)", path.read_text(errors="replace")))
    assert cited <= numbered, f"cited, not in docs/contract.md: {sorted(cited - numbered)}"
    listed = set(re.findall(r"\[`tests/golden/([\w.]+)`\]", contract.read_text()))
    assert listed == {p.name for p in GOLDEN.glob("*.json")}


def test_readme_links_the_contract_inside_the_repository() -> None:
    assert "](docs/contract.md)" in README.split("## Two commands")[0]
    assert "../shared" not in README


def test_the_readme_fault_list_is_the_sandboxs() -> None:
    [listed] = re.findall(r"faults: ((?:`\w+`,?\s*)+)", README)
    assert tuple(re.findall(r"`(\w+)`", listed)) == FAULTS


def test_every_lpu_failure_reason_a_doc_names_is_the_codes() -> None:
    [outcomes] = re.findall(r"`gateway_lpu_outcomes_total` \|.*?`reason` \(([^)]*)\)", METRICS)
    assert [r.strip() for r in outcomes.split(",")] == ["ok", *LPU_FAILURE_REASONS]
    runbook = (DOCS / "runbook.md").read_text()
    [by_reason] = re.findall(r'"LPU failures by reason": ((?:`\w+`,?\s*)+)', runbook)
    assert set(re.findall(r"`(\w+)`", by_reason)) == set(LPU_FAILURE_REASONS)
    # Any other list of reasons there (it starts with `timeout`) names reasons only.
    for doc in (DOCS / "runbook.md", DOCS / "metrics.md"):
        for listed in re.findall(r"`timeout`(?:,\s*`\w+`)+", doc.read_text()):
            unknown = set(re.findall(r"`(\w+)`", listed)) - set(LPU_FAILURE_REASONS)
            assert not unknown, (doc.name, unknown)


def test_a_key_followed_by_a_number_in_parentheses_states_its_default() -> None:
    """The docs' convention: `section.key` (N) or (N s) is the default, `section.key = N` a setting."""
    defaults, wrong = Config(), []
    for doc in _docs():
        for section, key, number in re.findall(
            r"`([a-z]+)\.([a-z_]+)` \((\d[\d,]*(?:\.\d+)?)(?: s)?\)", doc.read_text()
        ):
            value = getattr(getattr(defaults, section), key)
            if float(number.replace(",", "")) != float(value):
                wrong.append(f"{doc.name}: {section}.{key} ({number}), default {value}")
    assert not wrong, wrong


def test_the_readmes_common_keys_table_has_the_defaults() -> None:
    defaults = Config()
    table = README.split("The keys most deployments set:")[1].split("\n\n")[1]
    for _, keys, values in re.findall(r"^\| (.*?) \| (.*?) \| (.*?) \|$", table, re.M)[2:]:
        names = re.findall(r"`([a-z]+\.[a-z_]+)`", keys)
        shown = re.findall(r"`([^`]*)`", values)
        if len(shown) != len(names):
            continue  # a prose default ("empty: ..."), checked by the key rows of configuration.md
        for name, text in zip(names, shown, strict=True):
            section, key = name.split(".")
            value = getattr(getattr(defaults, section), key)
            assert text in {_as_toml(value), str(value), f"{value:g}" if isinstance(value, float) else ""}, name


def _load(path: Path) -> Config:
    """A shipped configuration as the gateway loads it; the Kubernetes one gets its Redis URL from
    the Secret (GATEWAY_REDIS_URL), as a pod does."""
    env = {CONFIG_FILE_ENV: str(path)}
    if path.is_relative_to(KUBERNETES):
        env["GATEWAY_REDIS_URL"] = "redis://redis.invalid:6379/0"
    return load_config(env=env)


def _shipped_configs() -> list[Path]:
    """Every gateway configuration the repo ships (the flags examples are not configurations)."""
    return [*sorted((ROOT / "config").glob("*.toml")), KUBERNETES / "base" / "gateway.toml"]


def test_every_shipped_config_drains_and_shuts_down_within_the_grace_period() -> None:
    grace = grace_seconds(objects(KUBERNETES / "base"))
    checked = 0
    for path in _shipped_configs():
        if "[server]" not in path.read_text() and path.name != "defaults.toml":
            continue  # a flags file
        server = _load(path).server
        assert server.drain_seconds + server.shutdown_timeout + GRACE_MARGIN <= grace, path.name
        checked += 1
    assert checked >= 3
    # And the sum deployment.md spells out is the base's.
    deployment = (DOCS / "deployment.md").read_text()
    [(said_grace, drain, shutdown, margin)] = re.findall(
        r"`terminationGracePeriodSeconds: (\d+)` ≥ `server.drain_seconds` \((\d+)\) \+ "
        r"`server.shutdown_timeout` \((\d+)\) \+ (\d+) s margin",
        deployment,
    )
    base = _load(KUBERNETES / "base" / "gateway.toml").server
    assert (float(said_grace), float(drain), float(shutdown), float(margin)) == (
        grace,
        base.drain_seconds,
        base.shutdown_timeout,
        GRACE_MARGIN,
    )


def test_the_pod_resources_the_docs_quote_are_the_manifests() -> None:
    resources = container(objects(KUBERNETES / "base"))["resources"]
    deployment = (DOCS / "deployment.md").read_text()
    [(cpu_request, memory_request, cpu_limit, memory_limit)] = re.findall(
        r"requests (\w+) CPU / (\d+) MiB, limits (\w+) CPU / (\d+) MiB", deployment
    )
    assert (cpu_request, f"{memory_request}Mi", cpu_limit, f"{memory_limit}Mi") == (
        resources["requests"]["cpu"],
        resources["requests"]["memory"],
        resources["limits"]["cpu"],
        resources["limits"]["memory"],
    )
    assert f"limit **{cpu_limit} CPU** and **{memory_limit} MiB**" in SIZING
    assert f"request **{cpu_request} CPU**" in SIZING and f"**{memory_request} MiB**" in SIZING


def test_sizes_quoted_in_two_places_agree() -> None:
    # Per-session budget: the code's constant, and the defaults' arithmetic.
    defaults = Config().session
    assert f"**{SESSION_MEMORY_KIB} KiB per session** (`SESSION_MEMORY_KIB`" in SIZING
    assert (
        f"`max_sessions = {defaults.max_sessions}` × {SESSION_MEMORY_KIB} KiB = "
        f"{store_memory_mib(defaults.max_sessions):.0f} MiB within `memory_budget_mb =\n{defaults.memory_budget_mb}`"
    ) in SIZING
    # Redis for the Kubernetes base's max_sessions: from the 5-LPU row of the measured table, the
    # same wherever it is quoted.
    [per_thousand] = re.findall(r"^\| 5 \| [^|]+ \| [^|]+ \| ([\d.]+) MiB \|", SIZING, re.M)
    sessions = _load(KUBERNETES / "base" / "gateway.toml").session.max_sessions
    gib = f"{sessions / 1000 * float(per_thousand) * 1.25 / 1024:.1f}"
    assert f"{sessions:,} × {per_thousand} KiB × 1.25 ≈ {gib} GiB" in SIZING
    quoted = {
        (path.name, figure)
        for path in _ours()
        for sentence in re.split(r"[.;\n]\s", path.read_text(errors="replace"))
        if f"{sessions:,}" in sentence or str(sessions) in sentence
        for figure in re.findall(r"≈ ([\d.]+) GiB", sentence)
    }
    assert quoted and {figure for _, figure in quoted} == {gib}, quoted
    # The process at rest, in MiB, wherever it is quoted.
    at_rest = {
        (path.name, figure)
        for path in _ours()
        for figure in re.findall(r"at rest[^\d\n]{0,6}(\d+) MiB|\((\d+) MiB at rest", path.read_text(errors="replace"))
    }
    figures = {a or b for _, (a, b) in at_rest}
    assert len(at_rest) >= 3 and len(figures) == 1, at_rest
    # The benchmark's memory per session: the README's is the latest run's, sizing.md's range covers every run.
    runs = [
        float(f)
        for f in re.findall(
            r"memory per cached 5-LPU session \(RSS[^|]*\| ([\d.]+) KiB", (DOCS / "benchmarks.md").read_text()
        )
    ]
    [(low, high)] = re.findall(r"agrees: ([\d.]+)–([\d.]+) KiB", SIZING)
    assert (float(low), float(high)) == (min(runs), max(runs))
    assert f"| {runs[0]} KiB (" in README


def _anchor(heading: str) -> str:
    # GitHub's: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
