"""Which side serves a new session: the rollout flags, the pure rule that applies them, and the
flags file, re-read on change or SIGHUP.

The rule runs once per session creation. A poll never consults it: a session is read from the
side that created it (the gateway's own sessions are in its store, every other GUID belongs to
the legacy service), so changing the flags never moves a session that already exists.

The percentage key is a hash of the bearer token (docs/rollout.md, "Who lands where"): it is
the only thing the create request carries that names the patient, and it is the same on every
replica and after every restart. Tokens are reissued from time to time, so a patient may change
sides between sessions, never inside one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.cohorts import Cohort, Selector, SelectorError, matches_any, old_form, parse_selectors
from gateway.config import RolloutConfig
from gateway.contract import GATEWAY, LEGACY, SHADOW
from gateway.migration.signals import MigrationFlags, SignalsError, parse_migration
from gateway.observability.metrics import Metrics
from gateway.rollout.guardrails.engine import Guardrails
from gateway.rollout.guardrails.rules import GuardrailRules, GuardrailsError, parse_guardrails
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.rollout")

# The modes are the sides, in the order the docs name them.
MODES = (LEGACY, GATEWAY, SHADOW)
# Every (side, reason) a decision can have; the metric's series are created up front so that a
# dashboard shows 0 rather than "no data" for a rule that has not fired yet.
DECISIONS = (
    (GATEWAY, "no_legacy"),
    (LEGACY, "kill_switch"),
    (LEGACY, "deny_list"),
    (LEGACY, "guardrail"),
    (GATEWAY, "allow_list"),
    (GATEWAY, "percentage"),
    (LEGACY, "default"),
    (GATEWAY, "default"),
    (SHADOW, "default"),
)
# The percentage has a resolution of 0.01 %.
BUCKETS = 10_000
MAX_SELECTORS = 1000
MAX_FILE_BYTES = 1024 * 1024


class FlagsError(ValueError):
    """The flags file cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class Flags:
    mode: str = LEGACY
    # "file" when the flags file set `mode`, else "config" (rollout.mode / GATEWAY_ROLLOUT_MODE).
    mode_source: str = "config"
    kill_switch: bool = False
    gateway_percent: float = 0.0
    # Cohort selectors (gateway/cohorts.py): `android/*/4.11`.
    allow_cohorts: tuple[Selector, ...] = ()
    deny_cohorts: tuple[Selector, ...] = ()
    salt: str = ""
    version: str = ""
    guardrails: GuardrailRules = field(default_factory=GuardrailRules)
    # Deprecation signals and brownouts (gateway/migration/signals.py): they apply to the old
    # path whichever side serves it, so they are read even without a legacy service.
    migration: MigrationFlags = field(default_factory=MigrationFlags)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mode_source": self.mode_source,
            "kill_switch": self.kill_switch,
            "gateway_percent": self.gateway_percent,
            "allow_cohorts": [str(s) for s in self.allow_cohorts],
            "deny_cohorts": [str(s) for s in self.deny_cohorts],
            "salt": self.salt,
            "version": self.version,
            "guardrails": self.guardrails.as_json(),
        }


@dataclass(frozen=True)
class Decision:
    side: str
    reason: str


def rollout_bucket(token: str, salt: str = "") -> int:
    """0..9999 from the token, identical in every process (unlike hash()). A salt of its own
    keeps it unrelated to the session's token hash; changing the salt reshuffles everyone."""
    digest = hashlib.sha256(b"visit-gateway/rollout\0" + salt.encode() + b"\0" + token.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_percentage(bucket: int, percent: float) -> bool:
    """Raising the percentage only adds buckets: whoever was on the gateway at 10 % stays there
    at 20 %, and lowering it moves back exactly the ones added last."""
    return bucket < round(percent * BUCKETS / 100)


def decide(
    flags: Flags, cohort: Cohort | None, bucket: int | None, tripped: bool = False, percent: float | None = None
) -> Decision:
    """The side for a new session. Precedence: kill switch, deny list, guardrail, allow list,
    percentage, default mode. Deny wins over allow, so a cohort both select stays on the legacy
    service; a tripped guardrail of the request's cohort (`tripped`) sends to the legacy service
    what would otherwise go to the gateway or to shadow. `percent` is the cohort's own gateway
    percentage when a step-up raised it. `bucket` is None when the request has no usable token:
    only the lists and the mode apply."""
    decision = _decide(flags, cohort, bucket, flags.gateway_percent if percent is None else percent)
    if tripped and decision.side != LEGACY:
        return Decision(LEGACY, "guardrail")
    return decision


def _decide(flags: Flags, cohort: Cohort | None, bucket: int | None, percent: float) -> Decision:
    if flags.kill_switch:
        return Decision(LEGACY, "kill_switch")
    if cohort is not None and matches_any(flags.deny_cohorts, cohort):
        return Decision(LEGACY, "deny_list")
    if cohort is not None and matches_any(flags.allow_cohorts, cohort):
        return Decision(GATEWAY, "allow_list")
    if bucket is not None and in_percentage(bucket, percent):
        return Decision(GATEWAY, "percentage")
    return Decision(flags.mode, "default")


FILE_KEYS = (
    "version",
    "kill_switch",
    "mode",
    "gateway_percent",
    "allow_cohorts",
    "deny_cohorts",
    "salt",
    "guardrails",
    "migration",
)


# The keys that named clients before cohorts did, and the key that replaced each.
_OLD_KEYS = {"allow_apps": "allow_cohorts", "deny_apps": "deny_cohorts"}


def _cohorts(data: dict[str, Any], key: str) -> tuple[Selector, ...]:
    try:
        return parse_selectors(data.get(key, []), key, MAX_SELECTORS)
    except SelectorError as exc:
        raise FlagsError(str(exc)) from None


def parse_flags(raw: bytes, default_mode: str) -> Flags:
    """The flags of a TOML flags file, or FlagsError. Unknown keys are errors: a misspelt
    `kill_swich = true` must not be silently ignored.

    A truncated file is refused (docs/rollout-flags.md): its required `version` must be the last
    plain key (after every other, before any table) and the file must end with a newline. A file
    rewritten in place is read empty, or cut anywhere, for a moment; every such prefix that does
    not hold all the plain keys (the kill switch, the mode, the percentage, the lists) is empty,
    does not parse, or lacks the version or its final newline. Replacing the file by a rename
    never shows a prefix at all."""
    if not raw.strip():
        raise FlagsError("empty file (truncated, or being rewritten in place?)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FlagsError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise FlagsError(f"not valid TOML: {exc}") from None
    for old, new in _OLD_KEYS.items():
        if old in data:
            raise FlagsError(str(old_form(old, "a list of ClientApplication ids", new, ())))
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise FlagsError(f"unknown key {unknown[0]!r} (known: {', '.join(FILE_KEYS)})")
    version = data.get("version", "")
    if not isinstance(version, (str, int)) or isinstance(version, bool) or len(str(version)) > 100:
        raise FlagsError("version must be a string or an integer")
    kill_switch = data.get("kill_switch", False)
    if not isinstance(kill_switch, bool):
        raise FlagsError("kill_switch must be true or false")
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        raise FlagsError(f"mode must be one of {', '.join(MODES)}")
    percent = data.get("gateway_percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise FlagsError("gateway_percent must be a number from 0 to 100")
    salt = data.get("salt", "")
    if not isinstance(salt, str) or len(salt) > 100:
        raise FlagsError("salt must be a string of at most 100 characters")
    try:
        guardrails = parse_guardrails(data["guardrails"]) if "guardrails" in data else GuardrailRules()
        migration = parse_migration(data.get("migration", {}))
    except (GuardrailsError, SignalsError) as exc:
        raise FlagsError(str(exc)) from None
    # Checked last, so that a complete file's own mistake is the one reported. Tables come after
    # every plain key in TOML: `version` is the last plain key, right before the first table.
    plain = [key for key, value in data.items() if not isinstance(value, dict)]
    if str(version) == "" or not plain or plain[-1] != "version" or not raw.endswith(b"\n"):
        raise FlagsError(
            "truncated: `version` must be the last plain key (after every other, before any table)"
            " and the file must end with a newline"
        )
    return Flags(
        mode=mode or default_mode,
        mode_source="file" if mode else "config",
        kill_switch=kill_switch,
        gateway_percent=float(percent),
        allow_cohorts=_cohorts(data, "allow_cohorts"),
        deny_cohorts=_cohorts(data, "deny_cohorts"),
        salt=salt,
        version=str(version),
        guardrails=guardrails,
        migration=migration,
    )


@dataclass
class FileState:
    """What the inspection endpoint shows about the flags file."""

    path: str
    valid: bool = True
    sha256: str | None = None
    loaded_at: float | None = None
    error: str | None = None
    reloads: int = 0
    _seen: tuple[Any, ...] | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "valid": self.valid,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
            "error": self.error,
            "reloads": self.reloads,
        }


def _read(path: str) -> tuple[tuple[Any, ...], bytes]:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise FlagsError(f"larger than {MAX_FILE_BYTES} bytes")
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), raw


def _signature(path: str) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Rollout:
    """The current flags of one app. `decide()` is what the create route calls; the watcher
    task (owned by the app, cancelled by `close()`) swaps in a new file's flags when it changes."""

    def __init__(
        self, config: RolloutConfig, metrics: Metrics, tasks: Tasks | None = None, guardrails: Guardrails | None = None
    ) -> None:
        self._config = config
        # Per-cohort fallback to legacy (gateway/rollout/guardrails/); None without a legacy service.
        self.guardrails = guardrails
        self._metrics = metrics
        self.enabled = bool(config.legacy_url)
        self.flags = Flags(mode=config.mode)
        # Without a legacy service the routing flags decide nothing; the file is still read for
        # its [migration] table, which applies whichever side serves the old path.
        self.file = FileState(config.flags_file) if config.flags_file else None
        self._wake = asyncio.Event()
        self._forced = False  # a SIGHUP asked for the next read even if the file looks unchanged
        self._tasks = tasks or Tasks()
        for side, reason in DECISIONS:
            metrics.rollout_decisions.labels(side, reason)
        for result in ("ok", "invalid"):
            metrics.rollout_flags_reloads.labels(result)
        metrics.rollout_flags_valid.set(1)

    def decide(self, token: str | None, cohort: Cohort | None) -> Decision:
        """`cohort` is the request's client cohort (classified once, by the request context)."""
        if not self.enabled:
            decision = Decision(GATEWAY, "no_legacy")
        else:
            flags, rails = self.flags, self.guardrails
            bucket = rollout_bucket(token, flags.salt) if token else None
            if rails is None or not rails.active:
                decision = decide(flags, cohort, bucket)
            else:
                percent = rails.percent(cohort, flags.gateway_percent)
                decision = decide(flags, cohort, bucket, tripped=rails.tripped(cohort), percent=percent)
        self._metrics.rollout_decisions.labels(decision.side, decision.reason).inc()
        return decision

    async def start(self) -> None:
        if self.guardrails is not None:
            await self.guardrails.start()
        if self.file is None:
            return
        await self.reload(force=True)
        self._tasks.every(self._config.flags_poll_interval, self._watch, "flags_watcher", wake=self._wake)

    def request_reload(self) -> None:
        """Re-read the file now (SIGHUP), even if it looks unchanged."""
        self._forced = True
        self._wake.set()

    async def _watch(self) -> None:
        forced, self._forced = self._forced, False
        await self.reload(force=forced)

    async def reload(self, force: bool = False) -> bool:
        """Reads the file if it changed (or `force`); returns whether new flags were applied.
        An unreadable or invalid file keeps the flags in force and logs one error per version."""
        state = self.file
        if state is None:
            return False
        if not force and state._seen is not None and _signature(state.path) == state._seen:
            return False
        try:
            signature, raw = await asyncio.to_thread(_read, state.path)
            digest = hashlib.sha256(raw).hexdigest()
            if not force and digest == state.sha256 and state.valid:
                state._seen = signature
                return False
            flags = parse_flags(raw, self._config.mode)
        except (OSError, FlagsError) as exc:
            problem = f"cannot read: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            state._seen = _signature(state.path)
            if force or state.valid or problem != state.error:
                log.error(
                    "rollout_flags_invalid",
                    path=state.path,
                    error=problem,
                    kept_version=self.flags.version,
                    kept_sha256=state.sha256,
                )
                self._metrics.rollout_flags_reloads.labels("invalid").inc()
            state.valid, state.error = False, problem
            self._metrics.rollout_flags_valid.set(0)
            return False
        state._seen, state.sha256, state.loaded_at = signature, digest, time.time()
        state.valid, state.error = True, None
        state.reloads += 1
        self.flags = flags
        if self.guardrails is not None:
            self.guardrails.update(flags.guardrails, digest, flags.gateway_percent)
        self._metrics.rollout_flags_valid.set(1)
        self._metrics.rollout_flags_reloads.labels("ok").inc()
        log.info(
            "rollout_flags_loaded",
            path=state.path,
            version=flags.version,
            sha256=digest,
            mode=flags.mode,
            gateway_percent=flags.gateway_percent,
            kill_switch=flags.kill_switch,
        )
        return True

    def describe(self) -> dict[str, Any]:
        """The effective flags and the file they came from, for the inspection endpoint."""
        return {
            "enabled": self.enabled,
            "flags": self.flags.as_json(),
            "file": self.file.as_json() if self.file else None,
            "guardrails": self.guardrails.describe() if self.guardrails is not None else None,
        }

    async def close(self) -> None:
        await self._tasks.cancel("flags_watcher")
        if self.guardrails is not None:
            await self.guardrails.close()
