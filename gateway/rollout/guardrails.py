"""Guardrails: per client cohort (app and app version, gateway/observability/client_apps.py),
rules from the flags file that send the cohort's new sessions back to the legacy service when
the gateway misbehaves for it (docs/rollout-guardrails.md).

Signals, counted per cohort over each rule's window, over the fleet: each replica counts its own
and publishes them on the shared board every interval, and evaluates on the sum of every live
replica's counts (without Redis, or while it is unreachable: this replica's own):
- `error_ratio`: gateway-side old-path answers with a 5xx status, per answer;
- `failed_lpu_ratio`: `Failed` LPUs per LPU, in the gateway's final answers (client sessions on
  the gateway side, and the gateway side of shadow compares);
- `mismatch_ratio`: shadow compares with a regression (a field beyond its noise margin), per
  compared session.
A rule needs `min_sessions` sessions (compared sessions for `mismatch_ratio`) in its window;
fewer is inconclusive and holds the cohort where it is: an inconclusive sample never trips and
never promotes.

The decision is pure (`read`, `next_state`, `step_up`); `Guardrails` applies it once per
`rollout.guardrail_interval` in a task the app owns. A trip is written to the shared board
(Redis when configured, else this process) and every replica reads the board on the same
interval, so a cohort moves on every replica within about two intervals. A tripped cohort stays
tripped until an admin re-arms it (`POST /admin/rollout/guardrails/<cohort>/rearm`) or the flags
file changes (a trip remembers the flags it tripped under). A cohort flips at most once per
`cooldown`: a re-arm followed by the same bad signal trips again only after the cool-down.
Sessions that exist keep their side: only the rule for new sessions consults the guardrails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import structlog
from redis.exceptions import RedisError

from gateway.config import RedisConfig, RolloutConfig
from gateway.contract import FAILED
from gateway.observability.metrics import Metrics
from gateway.rollout.window import Window
from gateway.store.base import StoreUnavailable
from gateway.store.redis_client import redis_client
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.guardrails")

SIGNALS = ("error_ratio", "failed_lpu_ratio", "mismatch_ratio")
TRIP, HEALTHY, INCONCLUSIVE = "trip", "healthy", "inconclusive"
GROUP = "guardrails"
MAX_RULES = 50
# Sessions whose final answer was counted (a session is polled many times once final).
MAX_COUNTED = 10_000


class GuardrailsError(ValueError):
    """The flags file's [guardrails] table cannot be used; one line naming the problem."""


def cohort_of(app: str, version: str) -> str:
    """A cohort's name, as metric label, admin path segment and board key: `android:4.11`."""
    return f"{app}:{version}"


@dataclass(frozen=True)
class Rule:
    signal: str
    above: float
    window: float = 300.0
    min_sessions: int = 20
    apps: frozenset[str] = frozenset()  # empty: every app
    versions: frozenset[str] = frozenset()  # empty: every version

    def applies(self, cohort: str) -> bool:
        app, _, version = cohort.partition(":")
        return (not self.apps or app in self.apps) and (not self.versions or version in self.versions)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"apps": sorted(self.apps), "versions": sorted(self.versions)}


@dataclass(frozen=True)
class StepUp:
    """Flagger-style promotion: while every rule of a cohort reads healthy (not inconclusive) for
    `every` seconds, its gateway percentage rises by `step`, up to `max_percent`."""

    step: float
    every: float
    max_percent: float = 100.0


@dataclass(frozen=True)
class GuardrailRules:
    rules: tuple[Rule, ...] = ()
    cooldown: float = 300.0
    step_up: StepUp | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "rules": [r.as_json() for r in self.rules],
            "cooldown": self.cooldown,
            "step_up": asdict(self.step_up) if self.step_up else None,
        }


def _number(table: dict[str, Any], key: str, default: float | None, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise GuardrailsError(f"guardrails: {key} must be a number from {low} to {high}")
    return float(value)


def _names(table: dict[str, Any], key: str) -> frozenset[str]:
    raw = table.get(key, [])
    if not isinstance(raw, list) or len(raw) > 1000 or not all(isinstance(x, str) and 0 < len(x) <= 200 for x in raw):
        raise GuardrailsError(f"guardrails: {key} must be a list of names")
    return frozenset(x.strip().lower() for x in raw)


def _known(table: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise GuardrailsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")


def parse_guardrails(data: Any) -> GuardrailRules:
    """The [guardrails] table of the flags file (docs/rollout-guardrails.md)."""
    if not isinstance(data, dict):
        raise GuardrailsError("guardrails must be a table")
    _known(data, ("cooldown", "rule", "step_up"), "guardrails")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        raise GuardrailsError(f"guardrails.rule must be an array of at most {MAX_RULES} tables")
    rules = []
    for raw in raw_rules:
        if not isinstance(raw, dict):
            raise GuardrailsError("guardrails.rule must be an array of tables")
        _known(raw, ("signal", "above", "window", "min_sessions", "apps", "versions"), "guardrails.rule")
        if raw.get("signal") not in SIGNALS:
            raise GuardrailsError(f"guardrails.rule: signal must be one of {', '.join(SIGNALS)}")
        min_sessions = raw.get("min_sessions", 20)
        if isinstance(min_sessions, bool) or not isinstance(min_sessions, int) or min_sessions < 1:
            raise GuardrailsError("guardrails.rule: min_sessions must be an integer >= 1")
        rules.append(
            Rule(
                signal=raw["signal"],
                above=_number(raw, "above", None, 0.0, 1.0),
                window=_number(raw, "window", 300.0, 1.0, 86400.0),
                min_sessions=min_sessions,
                apps=_names(raw, "apps"),
                versions=_names(raw, "versions"),
            )
        )
    step_up = None
    if "step_up" in data:
        raw = data["step_up"]
        if not isinstance(raw, dict):
            raise GuardrailsError("guardrails.step_up must be a table")
        _known(raw, ("step", "every", "max_percent"), "guardrails.step_up")
        step_up = StepUp(
            step=_number(raw, "step", None, 0.01, 100.0),
            every=_number(raw, "every", None, 1.0, 86400.0),
            max_percent=_number(raw, "max_percent", 100.0, 0.0, 100.0),
        )
    return GuardrailRules(tuple(rules), _number(data, "cooldown", 300.0, 0.0, 86400.0), step_up)


# The decision, pure.


@dataclass(frozen=True)
class Reading:
    signal: str
    value: float | None  # None: nothing to divide by
    sample: int  # sessions (compared sessions for mismatch_ratio) in the window
    outcome: str  # TRIP, HEALTHY or INCONCLUSIVE


def read(rule: Rule, counts: dict[str, int]) -> Reading:
    """One rule against one cohort's counts over the rule's window."""
    if rule.signal == "error_ratio":
        num, den, sample = counts.get("errors", 0), counts.get("answers", 0), counts.get("sessions", 0)
    elif rule.signal == "failed_lpu_ratio":
        num, den, sample = counts.get("failed", 0), counts.get("lpus", 0), counts.get("sessions", 0)
    else:
        num, den = counts.get("regressions", 0), counts.get("compared", 0)
        sample = den
    value = num / den if den else None
    if value is None or sample < rule.min_sessions:
        return Reading(rule.signal, value, sample, INCONCLUSIVE)
    return Reading(rule.signal, value, sample, TRIP if value > rule.above else HEALTHY)


@dataclass(frozen=True)
class CohortState:
    tripped: bool = False
    since: float | None = None  # when it tripped
    changed_at: float | None = None  # its last flip (a trip or a re-arm), for the cool-down
    why: dict[str, Any] | None = None  # the rule and reading that tripped it


def next_state(
    state: CohortState, readings: Iterable[tuple[Rule, Reading]], now: float, cooldown: float
) -> CohortState:
    """A tripped cohort stays tripped; an armed one trips on the first rule that reads TRIP, unless
    it flipped less than `cooldown` ago. Inconclusive and healthy readings hold."""
    if state.tripped:
        return state
    if state.changed_at is not None and now - state.changed_at < cooldown:
        return state
    for rule, reading in readings:
        if reading.outcome == TRIP:
            why = {
                "signal": rule.signal,
                "value": round(reading.value or 0.0, 4),
                "above": rule.above,
                "sample": reading.sample,
                "min_sessions": rule.min_sessions,
                "window": rule.window,
            }
            return CohortState(True, now, now, why)
    return state


def step_up(percent: float, healthy_since: float | None, now: float, plan: StepUp) -> tuple[float, float | None]:
    """(new percent, new healthy_since): one step when the cohort has been healthy for `every`
    seconds; the clock restarts at each step. `healthy_since` None: not healthy now."""
    if healthy_since is None or percent >= plan.max_percent or now - healthy_since < plan.every:
        return percent, healthy_since
    return min(plan.max_percent, percent + plan.step), now


# The shared board.


class Board(Protocol):
    """Where trips and re-arms are shared between replicas. Trips are kept per flags file (by its
    digest): new flags start with no trip, which is how a flags change re-arms everywhere.
    `load` answers (cohort → trip record, cohort → time of its last re-arm); `trip` whether this
    replica's record is the one kept; `exchange` publishes this replica's counts (`snapshot`,
    kept `ttl` seconds) and answers the other live replicas' counts."""

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]: ...
    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool: ...
    async def rearm(self, flags: str, cohort: str, at: float) -> None: ...
    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]: ...
    async def failed(self) -> None: ...
    async def close(self) -> None: ...


class LocalBoard:
    """One process: no Redis."""

    def __init__(self) -> None:
        self.trips: dict[tuple[str, str], dict[str, Any]] = {}
        self.rearms: dict[str, float] = {}

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        return {c: r for (f, c), r in self.trips.items() if f == flags}, dict(self.rearms)

    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool:
        return self.trips.setdefault((flags, cohort), record) is record

    async def rearm(self, flags: str, cohort: str, at: float) -> None:
        self.trips.pop((flags, cohort), None)
        self.rearms[cohort] = at

    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]:
        return []  # no other replica

    async def failed(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBoard:
    """Two small hashes, `<prefix>:guardrails:tripped:<flags digest>` and
    `<prefix>:guardrails:rearmed`, read by every replica once per interval. The first replica to
    trip a cohort writes its record (HSETNX): the "since" every replica shows is the same. A trip
    hash of flags no longer in force expires after KEEP_SECONDS."""

    KEEP_SECONDS = 7 * 86400

    def __init__(self, config: RedisConfig) -> None:
        self._redis = redis_client(config)
        self._timeout = config.timeout
        self._prefix = config.prefix
        self._rearmed = f"{config.prefix}:guardrails:rearmed"

    def _tripped(self, flags: str) -> str:
        return f"{self._prefix}:guardrails:tripped:{flags[:16]}"

    async def failed(self) -> None:
        """After a failed call: pooled connections to a Redis that went away are dead too, and each
        would fail once more after it is back."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await self._redis.connection_pool.disconnect()

    async def load(self, flags: str) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._tripped(flags))
                pipe.hgetall(self._rearmed)
                tripped, rearmed = await pipe.execute()
        trips = {}
        for key, raw in tripped.items():
            try:
                trips[key.decode()] = json.loads(raw)
            except ValueError:
                continue
        rearms = {}
        for key, raw in rearmed.items():
            try:
                rearms[key.decode()] = float(raw)
            except ValueError:
                continue
        return trips, rearms

    async def trip(self, flags: str, cohort: str, record: dict[str, Any]) -> bool:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._tripped(flags), cohort, json.dumps(record))
                pipe.expire(self._tripped(flags), self.KEEP_SECONDS)
                written, _ = await pipe.execute()
        return bool(written)

    async def exchange(self, flags: str, owner: str, snapshot: dict[str, Any], ttl: float) -> list[dict[str, Any]]:
        """Each replica's counts live in `<prefix>:guardrails:signals:<flags>:<owner>` for `ttl`;
        a sorted set of owners by last write finds the live ones (a dead replica's counts expire)."""
        base = f"{self._prefix}:guardrails:signals:{flags[:16]}"
        index, now, ttl_ms = f"{base}:replicas", time.time(), max(1, int(ttl * 1000))
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{base}:{owner}", json.dumps(snapshot), px=ttl_ms)
                pipe.zadd(index, {owner: now})
                pipe.zremrangebyscore(index, "-inf", now - ttl)
                pipe.pexpire(index, ttl_ms)
                pipe.zrange(index, 0, -1)
                *_, owners = await pipe.execute()
            others = [o.decode() for o in owners if o.decode() != owner]
            raws = await self._redis.mget([f"{base}:{o}" for o in others]) if others else []
        found = []
        for raw in raws:
            try:
                value = json.loads(raw) if raw is not None else None
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
        return found

    async def rearm(self, flags: str, cohort: str, at: float) -> None:
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._tripped(flags), cohort)
                pipe.hset(self._rearmed, cohort, repr(at))
                await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


BOARD_ERRORS = (RedisError, OSError, TimeoutError)


# The runtime.


@dataclass
class _Cohort:
    state: CohortState = field(default_factory=CohortState)
    windows: dict[float, Window] = field(default_factory=dict)  # rule window → its counts
    readings: list[tuple[Rule, Reading]] = field(default_factory=list)
    percent: float | None = None  # step-up: this cohort's own gateway percentage
    healthy_since: float | None = None
    rearm_seen: float = 0.0
    pending: dict[str, Any] | None = None  # a trip record the board could not take yet


class Guardrails:
    def __init__(
        self, config: RolloutConfig, metrics: Metrics, tasks: Tasks, cohorts: Iterable[str], board: Board | None = None
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._tasks = tasks
        self._board = board or LocalBoard()
        self.rules = GuardrailRules()
        self._flags = ""  # digest of the flags the rules came from
        self._cohorts: dict[str, _Cohort] = {c: _Cohort() for c in cohorts}
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._board_ok = True
        self._base_percent = 0.0
        # This replica on the board: the key its counts are published under.
        self._owner = uuid.uuid4().hex
        for cohort in self._cohorts:
            metrics.guardrail_tripped.labels(cohort).set(0)

    @property
    def active(self) -> bool:
        return bool(self.rules.rules)

    def update(self, rules: GuardrailRules, flags_digest: str, base_percent: float = 0.0) -> None:
        """New flags: their rules apply from now; trips made under other flags no longer count,
        and step-ups start again from the flags' percentage."""
        changed = flags_digest != self._flags
        self.rules, self._flags, self._base_percent = rules, flags_digest, base_percent
        now = time.time()
        for name, cohort in self._cohorts.items():
            if changed and cohort.state.tripped:
                # A flags change re-arms (the trip was made under other flags) and starts the cool-down.
                self._apply(name, cohort, CohortState(changed_at=now))
                cohort.pending = None
                self._metrics.guardrail_rearms.labels(name, "flags").inc()
                log.info("guardrail_rearmed", cohort=name, how="flags")
            cohort.windows = {w: cohort.windows.get(w) or Window(w) for w in {r.window for r in rules.rules}}
            cohort.percent = None
            cohort.healthy_since = None

    def _cohort(self, name: str) -> _Cohort | None:
        # Unknown names cannot come from the classifier; the guard keeps memory bounded anyway.
        return self._cohorts.get(name)

    def _add(self, name: str, **counts: int) -> None:
        cohort = self._cohort(name)
        if cohort is None or not self.active:
            return
        now = time.time()
        for window in cohort.windows.values():
            for key, n in counts.items():
                if n:
                    window.add(now, key, n)

    def record_answer(self, cohort: str, route: str, status: int) -> None:
        """A gateway-side answer on the old path (or the shadow's own create); a create is also
        a session, the sample size `min_sessions` counts."""
        self._add(cohort, answers=1, errors=int(status >= 500), sessions=int(route == "create"))

    def record_final(self, cohort: str, entries: Any, session: str | None = None) -> None:
        """A gateway final answer: its LPUs and how many Failed. `session` dedupes the many polls
        of one final session on this replica."""
        if not self.active or not isinstance(entries, list):
            return
        if session is not None:
            if session in self._counted:
                return
            self._counted[session] = None
            while len(self._counted) > MAX_COUNTED:
                self._counted.popitem(last=False)
        failed = sum(1 for e in entries if isinstance(e, dict) and e.get("state") == FAILED)
        self._add(cohort, lpus=len(entries), failed=failed)

    def counted(self, session: str) -> bool:
        return session in self._counted

    def record_compare(self, cohort: str, regression: bool) -> None:
        self._add(cohort, compared=1, regressions=int(regression))

    def tripped(self, cohort: str | None) -> bool:
        state = self._cohorts.get(cohort or "")
        return state is not None and state.state.tripped

    def percent(self, cohort: str | None, base: float) -> float:
        """The cohort's gateway percentage: the flags' own, or higher after step-ups."""
        state = self._cohorts.get(cohort or "")
        if state is None or state.percent is None:
            return base
        return max(base, state.percent)

    async def start(self) -> None:
        self._tasks.spawn(self._loop(), GROUP)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.guardrail_interval)
            try:
                await self.tick()
            except Exception:  # the loop must outlive a bug in one evaluation
                log.exception("guardrail_tick_error")

    async def tick(self, now: float | None = None) -> None:
        """One evaluation of every cohort on the counts of every live replica, then one read of
        the shared board."""
        now = time.time() if now is None else now
        if self.active:
            totals = await self._fleet_totals(now)
            for name, cohort in self._cohorts.items():
                await self._evaluate(name, cohort, now, totals.get(name, {}))
        await self.refresh(now)

    async def _fleet_totals(self, now: float) -> dict[str, dict[float, Counter[str]]]:
        """cohort → rule window → counts: this replica's, plus what the other live replicas
        published on the board (at most one interval old). Counts a replica published before the
        cohort's latest re-arm that this replica knows of are left out. Without the board: this
        replica's own."""
        local: dict[str, dict[float, Counter[str]]] = {}
        snapshot: dict[str, Any] = {}
        for name, cohort in self._cohorts.items():
            windows = {w: Counter({str(k): n for k, n in win.totals(now).items()}) for w, win in cohort.windows.items()}
            local[name] = windows
            published = {repr(w): dict(c) for w, c in windows.items() if c}
            if published:
                snapshot[name] = {"rearm": cohort.rearm_seen, "windows": published}
        ttl = max(5.0, 3 * self._config.guardrail_interval)
        try:
            others = await self._board.exchange(self._flags, self._owner, snapshot, ttl)
        except BOARD_ERRORS:
            await self._board_failed()
            return local
        for other in others:
            for name, published in other.items():
                cohort = self._cohorts.get(name)
                if cohort is None or not isinstance(published, dict):
                    continue
                if float(published.get("rearm", 0.0)) < cohort.rearm_seen:
                    continue
                for window, counts in (published.get("windows") or {}).items():
                    try:
                        target = local[name][float(window)]
                    except (KeyError, ValueError):
                        continue  # a window no rule of these flags has
                    target.update({k: int(n) for k, n in counts.items() if isinstance(n, int)})
        return local

    async def _evaluate(self, name: str, cohort: _Cohort, now: float, totals: dict[float, Counter[str]]) -> None:
        rules = [r for r in self.rules.rules if r.applies(name)]
        cohort.readings = [(r, read(r, dict(totals.get(r.window, Counter())))) for r in rules]
        for rule, reading in cohort.readings:
            value = math.nan if reading.outcome == INCONCLUSIVE or reading.value is None else reading.value
            self._metrics.guardrail_signal.labels(name, rule.signal).set(value)
        after = next_state(cohort.state, cohort.readings, now, self.rules.cooldown)
        if after.tripped and not cohort.state.tripped:
            record = {"since": after.since, "why": after.why, "flags": self._flags}
            try:
                decided = await self._board.trip(self._flags, name, record)
            except BOARD_ERRORS:
                await self._board_failed()
                # This replica trips on its own; the record goes to the board when it is back.
                decided, cohort.pending = True, record
            if decided:
                self._metrics.guardrail_trips.labels(name, (after.why or {}).get("signal", "")).inc()
                log.warning("guardrail_tripped", cohort=name, **(after.why or {}))
                self._apply(name, cohort, after)
            # else another replica's record was first: the board read below follows it, "since" and all.
        self._step(name, cohort, now)

    def _step(self, name: str, cohort: _Cohort, now: float) -> None:
        plan = self.rules.step_up
        if plan is None or cohort.state.tripped:
            cohort.healthy_since = None
            return
        healthy = bool(cohort.readings) and all(r.outcome == HEALTHY for _, r in cohort.readings)
        if not healthy:
            cohort.healthy_since = None
            return
        if cohort.healthy_since is None:
            cohort.healthy_since = now
        current = cohort.percent if cohort.percent is not None else self._base_percent
        stepped, cohort.healthy_since = step_up(current, cohort.healthy_since, now, plan)
        if stepped != current:
            cohort.percent = stepped
            self._metrics.guardrail_steps.labels(name).inc()
            log.info("guardrail_step_up", cohort=name, percent=stepped)

    def _apply(self, name: str, cohort: _Cohort, state: CohortState) -> None:
        cohort.state = state
        self._metrics.guardrail_tripped.labels(name).set(1 if state.tripped else 0)
        if state.tripped:
            cohort.percent = None
            cohort.healthy_since = None

    async def _board_failed(self) -> None:
        if self._board_ok:
            log.warning("guardrail_board_unavailable")
        self._board_ok = False
        await self._board.failed()

    async def refresh(self, now: float | None = None) -> None:
        """Takes the shared board's trips and re-arms; on a board failure keeps what it had."""
        now = time.time() if now is None else now
        try:
            for name, cohort in self._cohorts.items():
                if cohort.pending is not None:
                    await self._board.trip(self._flags, name, cohort.pending)
                    cohort.pending = None
            trips, rearms = await self._board.load(self._flags)
        except BOARD_ERRORS:
            await self._board_failed()
            return
        self._board_ok = True
        for name, cohort in self._cohorts.items():
            rearmed = rearms.get(name, 0.0)
            record = trips.get(name)
            if rearmed > cohort.rearm_seen:
                # A re-arm clears what was counted before it (the same old signal must not trip
                # again) and starts the cool-down, on every replica.
                cohort.rearm_seen = rearmed
                for window in cohort.windows.values():
                    window.clear()
                if not cohort.state.tripped:
                    cohort.state = replace(cohort.state, changed_at=rearmed)
            if record is not None and self.active:
                if not cohort.state.tripped:
                    since = float(record.get("since") or now)
                    self._apply(name, cohort, CohortState(True, since, since, record.get("why")))
                    log.warning("guardrail_followed", cohort=name, since=since)
            elif cohort.state.tripped:
                # Re-armed by an admin call on some replica: the trip is gone from the board.
                self._apply(name, cohort, CohortState(changed_at=rearmed or now))
                self._metrics.guardrail_rearms.labels(name, "admin").inc()
                log.info("guardrail_rearmed", cohort=name, how="admin")

    async def rearm(self, cohort: str) -> bool:
        """The admin call: False for a cohort that is not tripped. The board is written first, so
        every replica follows; this one at once. StoreUnavailable when the board cannot be written."""
        state = self._cohorts.get(cohort)
        if state is None or not state.state.tripped:
            return False
        try:
            await self._board.rearm(self._flags, cohort, time.time())
        except BOARD_ERRORS:
            raise StoreUnavailable from None  # a 503: the re-arm must reach every replica or none
        await self.refresh()
        return True

    def describe(self) -> dict[str, Any]:
        cohorts = {}
        for name, cohort in self._cohorts.items():
            if not cohort.state.tripped and not any(r.sample for _, r in cohort.readings):
                continue
            cohorts[name] = {
                "state": "tripped" if cohort.state.tripped else "armed",
                "since": cohort.state.since if cohort.state.tripped else None,
                "why": cohort.state.why if cohort.state.tripped else None,
                "last_change": cohort.state.changed_at,
                "percent": cohort.percent,
                "signals": [
                    {"signal": r.signal, "value": r.value, "sample": r.sample, "outcome": r.outcome}
                    for _, r in cohort.readings
                ],
            }
        return self.rules.as_json() | {"shared": not isinstance(self._board, LocalBoard), "cohorts": cohorts}

    async def close(self) -> None:
        await self._tasks.cancel(GROUP)
        await self._board.close()
