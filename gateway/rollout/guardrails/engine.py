"""The guardrails' engine: per client cohort (`app/platform/version`, gateway/cohorts.py), the
counts the rules read, evaluated on an interval, and the trips they decide, applied to the
rollout's rule for new sessions (docs/rollout-guardrails.md).

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

The decision is pure (rules.py: `read`, `next_state`, `step_up`); `Guardrails` applies it once
per `rollout.guardrail_interval` (`Tasks.every`). A trip is written to the shared board
(Redis when configured, else this process) and every replica reads the board on the same
interval, so a cohort moves on every replica within about two intervals. A tripped cohort stays
tripped until an admin re-arms it (`POST /admin/rollout/guardrails/<app>/<platform>/<version>/rearm`) or the flags
file changes (a trip remembers the flags it tripped under). A cohort flips at most once per
`cooldown`: a re-arm followed by the same bad signal trips again only after the cool-down.
Sessions that exist keep their side: only the rule for new sessions consults the guardrails.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from gateway.cohorts import Cohort
from gateway.config import RolloutConfig
from gateway.observability.metrics import Metrics
from gateway.rollout.guardrails.board import BOARD_ERRORS, Board, LocalBoard
from gateway.rollout.guardrails.rules import (
    HEALTHY,
    INCONCLUSIVE,
    CohortState,
    GuardrailRules,
    Reading,
    Rule,
    next_state,
    read,
    step_up,
)
from gateway.store.base import StoreUnavailable
from gateway.tasks import Tasks
from gateway.window import Window

log = structlog.get_logger("gateway.guardrails")

GROUP = "guardrails"


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
        self,
        config: RolloutConfig,
        metrics: Metrics,
        tasks: Tasks,
        cohorts: Iterable[Cohort],
        board: Board | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._tasks = tasks
        self._board = board or LocalBoard()
        self.rules = GuardrailRules()
        self._flags = ""  # digest of the flags the rules came from
        self._cohorts: dict[Cohort, _Cohort] = {c: _Cohort() for c in cohorts}
        self._board_ok = True
        self._base_percent = 0.0
        # This replica on the board: the key its counts are published under.
        self._owner = uuid.uuid4().hex
        for cohort in self._cohorts:
            metrics.guardrail_tripped.labels(str(cohort)).set(0)

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
                self._metrics.guardrail_rearms.labels(str(name), "flags").inc()
                log.info("guardrail_rearmed", cohort=str(name), how="flags")
            cohort.windows = {w: cohort.windows.get(w) or Window(w) for w in {r.window for r in rules.rules}}
            cohort.percent = None
            cohort.healthy_since = None

    def _add(self, name: Cohort, **counts: int) -> None:
        if not self.active:
            return
        # Cohorts come from the classifier's closed set; the guard keeps memory bounded anyway.
        cohort = self._cohorts.get(name)
        if cohort is None:
            return
        now = time.time()
        for window in cohort.windows.values():
            for key, n in counts.items():
                if n:
                    window.add(now, key, n)

    def record_answer(self, cohort: Cohort, route: str, status: int) -> None:
        """A gateway-side answer on the old path (or the shadow's own create); a create is also
        a session, the sample size `min_sessions` counts."""
        self._add(cohort, answers=1, errors=int(status >= 500), sessions=int(route == "create"))

    def record_final(self, cohort: Cohort, lpus: int, failed: int) -> None:
        """A gateway final answer, counted once per session: its LPUs and how many Failed."""
        self._add(cohort, lpus=lpus, failed=failed)

    def record_compare(self, cohort: Cohort, regression: bool) -> None:
        self._add(cohort, compared=1, regressions=int(regression))

    def tripped(self, cohort: Cohort | None) -> bool:
        state = self._cohorts.get(cohort) if cohort is not None else None
        return state is not None and state.state.tripped

    def percent(self, cohort: Cohort | None, base: float) -> float:
        """The cohort's gateway percentage: the flags' own, or higher after step-ups."""
        state = self._cohorts.get(cohort) if cohort is not None else None
        if state is None or state.percent is None:
            return base
        return max(base, state.percent)

    async def start(self) -> None:
        self._tasks.every(self._config.guardrail_interval, self.tick, GROUP)

    async def tick(self, now: float | None = None) -> None:
        """One evaluation of every cohort on the counts of every live replica, then one read of
        the shared board."""
        now = time.time() if now is None else now
        if self.active:
            totals = await self._fleet_totals(now)
            for name, cohort in self._cohorts.items():
                await self._evaluate(name, cohort, now, totals.get(name, {}))
        await self.refresh(now)

    async def _fleet_totals(self, now: float) -> dict[Cohort, dict[float, Counter[str]]]:
        """cohort → rule window → counts: this replica's, plus what the other live replicas
        published on the board (at most one interval old). Counts a replica published before the
        cohort's latest re-arm that this replica knows of are left out. Without the board: this
        replica's own."""
        local: dict[Cohort, dict[float, Counter[str]]] = {}
        snapshot: dict[str, Any] = {}
        for name, cohort in self._cohorts.items():
            windows = {w: Counter({str(k): n for k, n in win.totals(now).items()}) for w, win in cohort.windows.items()}
            local[name] = windows
            published = {repr(w): dict(c) for w, c in windows.items() if c}
            if published:
                snapshot[str(name)] = {"rearm": cohort.rearm_seen, "windows": published}
        ttl = max(5.0, 3 * self._config.guardrail_interval)
        try:
            others = await self._board.exchange(self._flags, self._owner, snapshot, ttl)
        except BOARD_ERRORS:
            await self._board_failed()
            return local
        for other in others:
            for text, published in other.items():
                name = Cohort.parse(text)
                cohort = self._cohorts.get(name) if name is not None else None
                if name is None or cohort is None or not isinstance(published, dict):
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

    async def _evaluate(self, name: Cohort, cohort: _Cohort, now: float, totals: dict[float, Counter[str]]) -> None:
        rules = [r for r in self.rules.rules if r.applies(name)]
        cohort.readings = [(r, read(r, dict(totals.get(r.window, Counter())))) for r in rules]
        for rule, reading in cohort.readings:
            value = math.nan if reading.outcome == INCONCLUSIVE or reading.value is None else reading.value
            self._metrics.guardrail_signal.labels(str(name), rule.signal).set(value)
        after = next_state(cohort.state, cohort.readings, now, self.rules.cooldown)
        if after.tripped and not cohort.state.tripped:
            record = {"since": after.since, "why": after.why, "flags": self._flags}
            try:
                decided = await self._board.trip(self._flags, str(name), record)
            except BOARD_ERRORS:
                await self._board_failed()
                # This replica trips on its own; the record goes to the board when it is back.
                decided, cohort.pending = True, record
            if decided:
                self._metrics.guardrail_trips.labels(str(name), (after.why or {}).get("signal", "")).inc()
                log.warning("guardrail_tripped", cohort=str(name), **(after.why or {}))
                self._apply(name, cohort, after)
            # else another replica's record was first: the board read below follows it, "since" and all.
        self._step(name, cohort, now)

    def _step(self, name: Cohort, cohort: _Cohort, now: float) -> None:
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
            self._metrics.guardrail_steps.labels(str(name)).inc()
            log.info("guardrail_step_up", cohort=str(name), percent=stepped)

    def _apply(self, name: Cohort, cohort: _Cohort, state: CohortState) -> None:
        cohort.state = state
        self._metrics.guardrail_tripped.labels(str(name)).set(1 if state.tripped else 0)
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
                    await self._board.trip(self._flags, str(name), cohort.pending)
                    cohort.pending = None
            trips, rearms = await self._board.load(self._flags)
        except BOARD_ERRORS:
            await self._board_failed()
            return
        self._board_ok = True
        for name, cohort in self._cohorts.items():
            rearmed = rearms.get(str(name), 0.0)
            record = trips.get(str(name))
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
                    log.warning("guardrail_followed", cohort=str(name), since=since)
            elif cohort.state.tripped:
                # Re-armed by an admin call on some replica: the trip is gone from the board.
                self._apply(name, cohort, CohortState(changed_at=rearmed or now))
                self._metrics.guardrail_rearms.labels(str(name), "admin").inc()
                log.info("guardrail_rearmed", cohort=str(name), how="admin")

    async def rearm(self, cohort: Cohort) -> bool:
        """The admin call: False for a cohort that is not tripped. The board is written first, so
        every replica follows; this one at once. StoreUnavailable when the board cannot be written."""
        state = self._cohorts.get(cohort)
        if state is None or not state.state.tripped:
            return False
        try:
            await self._board.rearm(self._flags, str(cohort), time.time())
        except BOARD_ERRORS:
            raise StoreUnavailable from None  # a 503: the re-arm must reach every replica or none
        await self.refresh()
        return True

    def describe(self) -> dict[str, Any]:
        cohorts = {}
        for name, cohort in self._cohorts.items():
            if not cohort.state.tripped and not any(r.sample for _, r in cohort.readings):
                continue
            cohorts[str(name)] = {
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
