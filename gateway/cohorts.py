"""Who a request comes from: the one `Cohort(app, platform, version)`, its one text form
`app/platform/version`, the client table that classifies a request into it, and the selectors a
flags file names cohorts with (docs/rollout-flags.md, "Naming cohorts").

Every part comes from a closed set built from the config: the app names of `[clients]`, the
platform names of `migration.platforms`, the versions of `clients.versions`, plus "other" (a
header named nothing configured) and "unknown" (no header). A client whose app the table does
not name, whatever its headers, is the one cohort `unknown/unknown/unknown`. So the flags file,
the ledger, the guardrails and every metric label can never grow with what clients send.

Pure, apart from the table's memo of headers already classified.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gateway.contract import OTHER, UNKNOWN

# The first product of the User-Agent, as old-api.md gives it: "<app>/<version> ...". Anchored
# and bounded, so a long header costs one short match.
_FIRST_PRODUCT = re.compile(r"[^/\s]{1,64}/v?([0-9]{1,6})\.([0-9]{1,6})")
_MAJOR_MINOR = re.compile(r"v?([0-9]{1,6})\.([0-9]{1,6})")
# Only the start of a User-Agent is searched for the platform (a header may be long).
_PLATFORM_CHARS = 512
# Distinct (ClientApplication, User-Agent) pairs remembered per table: a request's pair is
# classified once. Clients choose the headers, so the memo is emptied when full.
MEMO_SIZE = 4096
SEPARATOR = "/"
ANY = "*"
# A part of a selector: a name (an app, platform or version as the config names them), or `*`.
_PART = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PARTS = ("app", "platform", "version")


class Cohort(NamedTuple):
    app: str
    platform: str
    version: str

    def __str__(self) -> str:
        # Names cannot hold "/" (the config checks them), so the text splits back unambiguously.
        return f"{self.app}/{self.platform}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> Cohort | None:
        """None for a text that is not a cohort (Redis is shared: the gateway does not trust it)."""
        parts = text.split(SEPARATOR)
        return cls(*parts) if len(parts) == 3 and all(parts) else None


UNKNOWN_COHORT = Cohort(UNKNOWN, UNKNOWN, UNKNOWN)


class ClientsSettings(Protocol):
    """The `[clients]` section as the table is built from it (gateway.config.ClientsConfig)."""

    by_guid: Mapping[str, str]
    by_user_agent: Mapping[str, str]
    versions: Iterable[str]


class ClientTable:
    """`[clients]` and `migration.platforms`, compiled once per app. `classify` is the one
    classifier: the request-context middleware calls it once per request."""

    def __init__(self, clients: ClientsSettings, platforms: Mapping[str, str]) -> None:
        self.by_guid = {guid.lower(): name for guid, name in clients.by_guid.items()}
        self.by_user_agent = tuple((re.compile(pattern), name) for pattern, name in clients.by_user_agent.items())
        self.versions = frozenset(clients.versions)
        self.platforms = tuple((re.compile(pattern), name) for pattern, name in platforms.items())
        self._memo: dict[tuple[str | None, str | None], Cohort] = {}
        self.cohorts = frozenset(self._every_cohort())

    def classify(self, client_application: str | None, user_agent: str | None) -> Cohort:
        """The cohort of a request's ClientApplication and User-Agent headers, remembered."""
        key = (client_application, user_agent)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            found = self._memo[key] = cohort_of(self, client_application, user_agent)
        return found

    @property
    def apps(self) -> tuple[str, ...]:
        """Every app the table names, in config order."""
        return tuple(dict.fromkeys([*self.by_guid.values(), *(name for _, name in self.by_user_agent)]))

    def _every_cohort(self) -> Iterable[Cohort]:
        platforms = (*dict.fromkeys(name for _, name in self.platforms), OTHER, UNKNOWN)
        versions = (*sorted(self.versions), OTHER, UNKNOWN)
        for app in self.apps:
            for platform in platforms:
                for version in versions:
                    yield Cohort(app, platform, version)
        yield UNKNOWN_COHORT

    def ordered(self) -> list[Cohort]:
        """Every cohort the config can produce, in a stable order (for series made up front)."""
        return sorted(self.cohorts)


def cohort_of(table: ClientTable, client_application: str | None, user_agent: str | None) -> Cohort:
    app, version = app_of(table, client_application, user_agent)
    if app in (OTHER, UNKNOWN):
        return UNKNOWN_COHORT
    return Cohort(app, platform_of(table, user_agent), version)


def app_of(table: ClientTable, client_application: str | None, user_agent: str | None) -> tuple[str, str]:
    """(app, app version) for a request's ClientApplication and User-Agent headers.

    A known GUID names the app; otherwise the first User-Agent pattern that matches does. The
    version is the matching pattern's `version` group if it has one, else the version of the
    User-Agent's first product, cut to major.minor and kept only if it is a configured version.
    """
    guid = (client_application or "").strip().lower()
    agent = (user_agent or "").strip()
    app = table.by_guid.get(guid) if guid else None
    version_text: str | None = None
    for pattern, name in table.by_user_agent if agent else ():
        if app not in (None, name):
            continue
        match = pattern.search(agent)
        if match is not None:
            app = name
            version_text = match.group("version") if "version" in pattern.groupindex else None
            break
    if app is None:
        app = OTHER if guid or agent else UNKNOWN
    return app, app_version(table, version_text, agent)


def app_version(table: ClientTable, version_text: str | None, user_agent: str) -> str:
    """major.minor if it is a configured version, "other" if it is not, "unknown" if none."""
    match = _MAJOR_MINOR.match(version_text) if version_text else _FIRST_PRODUCT.match(user_agent)
    if match is None:
        return UNKNOWN
    version = f"{int(match.group(1))}.{int(match.group(2))}"
    return version if version in table.versions else OTHER


def platform_of(table: ClientTable, user_agent: str | None) -> str:
    """The first `migration.platforms` pattern found in the User-Agent names the platform."""
    agent = (user_agent or "")[:_PLATFORM_CHARS]
    if not agent.strip():
        return UNKNOWN
    for pattern, name in table.platforms:
        if pattern.search(agent):
            return name
    return OTHER


# Selecting cohorts in the flags file.


class SelectorError(ValueError):
    """A cohort selector of the flags file cannot be used; one line that shows the right form."""


@dataclass(frozen=True)
class Selector:
    """`app/platform/version`, each part a name or `*` (any value, "other" and "unknown" too)."""

    app: str = ANY
    platform: str = ANY
    version: str = ANY

    def matches(self, cohort: Cohort) -> bool:
        return (
            (self.app == ANY or self.app == cohort.app)
            and (self.platform == ANY or self.platform == cohort.platform)
            and (self.version == ANY or self.version == cohort.version)
        )

    def __str__(self) -> str:
        return SEPARATOR.join((self.app, self.platform, self.version))


def parse_selector(text: object, where: str) -> Selector:
    example = "e.g. android/*/4.11 (app/platform/version, * for any part)"
    if not isinstance(text, str):
        raise SelectorError(f"{where} must hold cohort selectors as strings, {example}")
    parts = text.strip().split(SEPARATOR)
    if len(parts) == 1 and ":" in text:
        # The guardrails' old `app:version` names.
        app, _, version = text.strip().partition(":")
        raise SelectorError(f"{where}: {text!r} is the old form; write {f'{app}/*/{version}'!r}")
    if len(parts) != 3 or not all(_PART.fullmatch(p) for p in parts):
        raise SelectorError(f"{where}: {text!r} is not a cohort selector; {example}")
    return Selector(*parts)


def parse_selectors(raw: object, where: str, limit: int = 1000) -> tuple[Selector, ...]:
    """A flags file's list of cohort selectors (`["android/*/4.11", "beta/ios/*"]`)."""
    if not isinstance(raw, list) or len(raw) > limit:
        raise SelectorError(f'{where} must be a list of at most {limit} cohort selectors, e.g. ["android/*/4.11"]')
    return tuple(dict.fromkeys(parse_selector(text, where) for text in raw))


def matches_any(selectors: Iterable[Selector], cohort: Cohort) -> bool:
    return any(s.matches(cohort) for s in selectors)


def old_form(where: str, old: str, new: str, example: Iterable[Selector]) -> SelectorError:
    """The one line that refuses a flags file's old way of naming clients and shows the new one."""
    shown = ", ".join(f'"{s}"' for s in example) or '"android/*/4.11"'
    return SelectorError(f"{where}: {old} is no longer read; name cohorts instead: {new} = [{shown}]")


def selectors_from(apps: object = None, platform: object = None, versions: object = None) -> tuple[Selector, ...]:
    """The selectors that say what an old app/platform/versions table said, for `old_form`'s
    line (best effort: what cannot be translated is left as `*`)."""

    def names(raw: object) -> list[str]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            return [ANY]
        found = [x.strip() for x in raw if isinstance(x, str) and _PART.fullmatch(x.strip())]
        return found or [ANY]

    return tuple(Selector(a, p, v) for a in names(apps) for p in names(platform) for v in names(versions))
