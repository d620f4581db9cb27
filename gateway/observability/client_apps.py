"""Which client app and app version a request comes from, as metric label values.

Pure functions over a table built once from `[clients]` in the config. Every answer comes from
a closed set (the configured app names and versions, plus "other" and "unknown"), so a client
that sends a new GUID or User-Agent on every request still adds no metric series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.contract import OTHER, UNKNOWN

# The first product of the User-Agent, as old-api.md gives it: "<app>/<version> ...". Anchored
# and bounded, so a long header costs one short match.
_FIRST_PRODUCT = re.compile(r"[^/\s]{1,64}/v?([0-9]{1,6})\.([0-9]{1,6})")
_MAJOR_MINOR = re.compile(r"v?([0-9]{1,6})\.([0-9]{1,6})")


# Distinct (ClientApplication, User-Agent) pairs remembered per table: a request's pair is
# classified once. Clients choose the headers, so the memo is emptied when full.
MEMO_SIZE = 4096


@dataclass(frozen=True)
class ClientTable:
    by_guid: dict[str, str]
    by_user_agent: tuple[tuple[re.Pattern[str], str], ...]
    versions: frozenset[str]
    memo: dict[tuple[str | None, str | None], tuple[str, str]] = field(default_factory=dict, compare=False)

    def classify(self, client_application: str | None, user_agent: str | None) -> tuple[str, str]:
        """`classify(self, ...)`, remembered."""
        key = (client_application, user_agent)
        found = self.memo.get(key)
        if found is None:
            if len(self.memo) >= MEMO_SIZE:
                self.memo.clear()
            found = self.memo[key] = classify(self, client_application, user_agent)
        return found

    @property
    def apps(self) -> tuple[str, ...]:
        """Every value the app label can take, configured names first."""
        names = dict.fromkeys([*self.by_guid.values(), *(name for _, name in self.by_user_agent)])
        return (*names, OTHER, UNKNOWN)


class ClientsSettings(Protocol):
    """The `[clients]` section as the table is built from it (gateway.config.ClientsConfig)."""

    by_guid: Mapping[str, str]
    by_user_agent: Mapping[str, str]
    versions: Iterable[str]


def client_table(config: ClientsSettings) -> ClientTable:
    return ClientTable(
        by_guid={guid.lower(): name for guid, name in config.by_guid.items()},
        by_user_agent=tuple((re.compile(pattern), name) for pattern, name in config.by_user_agent.items()),
        versions=frozenset(config.versions),
    )


def classify(table: ClientTable, client_application: str | None, user_agent: str | None) -> tuple[str, str]:
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
