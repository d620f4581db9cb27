"""The migration's one object per app (`keys.MIGRATION`): the HTTP edge (gateway/http/old_path.py)
asks it for a cohort's deprecation headers and a create's brownout decision, and tells it what
each old-path request became; the admin route asks it for the report. The cohort itself comes
classified (gateway/cohorts.py), once per request.

Everything on the request path is in-process and O(configured entries): counting goes to the
ledger writer's pending dict, the guards to an in-process window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from gateway.cohorts import ClientTable, Cohort
from gateway.config import MigrationConfig
from gateway.contract import CREATE_PATH, OLD_ROUTES
from gateway.migration.brownout import (
    DELAYED,
    BrownoutCounts,
    BrownoutDecision,
    Guards,
    GuardWindow,
    decide_brownout,
    open_window,
)
from gateway.migration.clock import Clock, day_of
from gateway.migration.ledger import CREATES, ERRORS, REQUESTS, SESSIONS, History, Ledger, LedgerWriter
from gateway.migration.report import Rules, build_report
from gateway.migration.signals import MigrationFlags
from gateway.observability.metrics import Metrics
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.migration")
CREATE = OLD_ROUTES[CREATE_PATH]
# The report's spans are 7 and 30 days: older buckets are kept (retention) but not read for it.
REPORT_DAYS = 30


class Migration:
    def __init__(
        self,
        config: MigrationConfig,
        clients: ClientTable,
        ledger: Ledger,
        clock: Clock,
        tasks: Tasks,
        metrics: Metrics,
        flags: Callable[[], MigrationFlags],
    ) -> None:
        self._config = config
        self._clients = clients
        self.clock = clock
        self._metrics = metrics
        self._flags = flags
        self.writer = LedgerWriter(ledger, clock, tasks, config.flush_interval, config.retention_days, self._flushed)
        self.guard = GuardWindow(clock, config.brownout_guard_window, len(clients.cohorts))
        self._guards = Guards(
            config.brownout_guard_min_requests, config.brownout_max_share, config.brownout_max_error_rate
        )
        self.counts = BrownoutCounts()
        self._delayed = 0  # creates a soft brownout holds now
        self._headers: dict[Cohort, tuple[tuple[str, str], ...]] = {}
        self._headers_of: MigrationFlags | None = None

    def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        await self.writer.close()

    def headers(self, cohort: Cohort) -> tuple[tuple[str, str], ...]:
        """The cohort's Deprecation/Sunset/Link headers, worked out once per flags version."""
        flags = self._flags()
        if flags is not self._headers_of:
            self._headers, self._headers_of = {}, flags
        found = self._headers.get(cohort)
        if found is None:
            found = self._headers[cohort] = flags.headers_for(cohort)
        return found

    def brownout(self, cohort: Cohort, token: str | None) -> BrownoutDecision | None:
        """The brownout decision for a create: counted and logged (never with the token)."""
        flags, now = self._flags(), self.clock.now()
        # Most creates meet no window: the guard's figures are summed only for those that do.
        if open_window(flags, cohort, now) is None:
            return None
        decision = decide_brownout(flags, cohort, token, now, self.guard.view(cohort), self._guards)
        if decision is None:
            return None
        if decision.outcome == DELAYED and self._delayed >= self._config.brownout_max_delayed:
            decision = BrownoutDecision(decision.brownout, "spared")
        self._metrics.child(self._metrics.brownout_decisions, str(cohort), decision.outcome).inc()
        self.counts.add(decision, cohort)
        log.info("brownout_decision", brownout=decision.brownout, outcome=decision.outcome, cohort=str(cohort))
        return decision

    async def hold(self, decision: BrownoutDecision) -> None:
        """A soft brownout's delay (bounded: brownout_max_delayed at once, MAX_DELAY each)."""
        self._delayed += 1
        try:
            await asyncio.sleep(decision.delay)
        finally:
            self._delayed -= 1

    def observe(self, cohort: Cohort, route: str, side: str, status: int, brownout: BrownoutDecision | None) -> None:
        """One old-path request, answered: into the pending ledger counts and the guard window."""
        refused = brownout is not None and brownout.outcome == "refused"
        error = status >= 500 and not refused
        fields = [REQUESTS, side]
        if route == CREATE:
            fields.append(CREATES)
            if status == 200:
                fields.append(SESSIONS)
            # The guards judge the minutes before a window opens too, so they count whenever a
            # brownout is configured (and cost nothing when none is).
            if self._flags().brownouts:
                self.guard.record(cohort, refused, error)
        if error:
            fields.append(ERRORS)
        if brownout is not None and brownout.outcome in ("refused", "delayed", "dry_run"):
            fields.append(brownout.outcome)
        self.writer.pending.record(cohort, self.clock.now(), fields)

    def _flushed(self, result: str, last_seen: dict[str, float]) -> None:
        self._metrics.migration_ledger_flushes.labels(result).inc()
        if result != "ok":
            return
        now = self.clock.now()
        for key, last in last_seen.items():
            # Bounded by the configured tables: a cohort an older config made is not exported.
            if Cohort.parse(key) in self._clients.cohorts:
                self._metrics.migration_since_last_seen.labels(key).set(max(0.0, now - last))

    async def report(self) -> dict[str, Any]:
        """The report, after writing what this replica has pending (others' last second may be
        missing: they flush within migration.flush_interval)."""
        report, _ = await self.report_and_history(min(self._config.retention_days, REPORT_DAYS))
        return report

    async def report_and_history(self, days: int) -> tuple[dict[str, Any], History]:
        """The report and the ledger's last `days` days it was built from (the console charts
        the whole retention window: one read serves both)."""
        await self.writer.flush()
        now = self.clock.now()
        history = await self.writer.ledger.history(day_of(now), days)
        rules = Rules(self._config.retire_after_days, self._config.silent_after_days, self._config.fading_ratio)
        report = build_report(history, now, rules)
        flags = self._flags()
        report["ledger"] = {"backend": self.writer.ledger.backend, "retention_days": self._config.retention_days}
        report["brownouts"] = self.counts.describe(flags, now)
        report["brownout_kill_switch"] = flags.brownout_kill_switch
        report["signals"] = flags.as_json()
        return report, history
