"""A cohort is (app, platform, app version): every value comes from a closed set built from the
config (the client table of gateway/observability/client_apps.py and `migration.platforms`), so
the ledger, the gauge and the report can never grow with what clients send. Every client the
tables do not name, whatever its headers, is the one cohort unknown/unknown/unknown."""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.contract import OTHER, UNKNOWN
from gateway.observability.client_apps import ClientTable


class Cohort(NamedTuple):
    app: str
    platform: str
    version: str

    @property
    def key(self) -> str:
        # Names cannot hold "/" (config checks them), so the key splits back unambiguously.
        return f"{self.app}/{self.platform}/{self.version}"

    @classmethod
    def from_key(cls, key: str) -> Cohort | None:
        """None for a key that is not one (Redis is shared: the gateway does not trust it)."""
        parts = key.split("/")
        return cls(*parts) if len(parts) == 3 and all(parts) else None


UNKNOWN_COHORT = Cohort(UNKNOWN, UNKNOWN, UNKNOWN)


class Platforms:
    """`migration.platforms`, compiled once."""

    def __init__(self, table: dict[str, str]) -> None:
        self._patterns = tuple((re.compile(pattern), name) for pattern, name in table.items())
        self.names = frozenset(name for _, name in self._patterns)

    def of(self, user_agent: str | None) -> str:
        # Bounded: a header is at most server.max_field_size bytes, and only its start is searched.
        agent = (user_agent or "")[:512]
        if not agent.strip():
            return UNKNOWN
        for pattern, name in self._patterns:
            if pattern.search(agent):
                return name
        return OTHER


def cohort_of(app: str, version: str, platform: str) -> Cohort:
    """The cohort of a request already classified by app and version (client_apps.classify)."""
    if app in (OTHER, UNKNOWN):
        return UNKNOWN_COHORT
    return Cohort(app, platform, version)


def possible(table: ClientTable, platforms: Platforms, cohort: Cohort) -> bool:
    """Whether the current config can produce `cohort`: what the gauge is bounded by."""
    if cohort == UNKNOWN_COHORT:
        return True
    return (
        cohort.app in table.apps
        and cohort.app not in (OTHER, UNKNOWN)
        and (cohort.platform in platforms.names or cohort.platform in (OTHER, UNKNOWN))
        and (cohort.version in table.versions or cohort.version in (OTHER, UNKNOWN))
    )
