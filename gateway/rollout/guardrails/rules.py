"""The guardrails' pure part: the `[guardrails]` table of the flags file parsed into rules
(docs/rollout-guardrails.md), and the decisions: a rule's reading of one cohort's counts
(`read`), a cohort's next state (`next_state`, trips and the cool-down) and its step-up
(`step_up`). No clock, no I/O: the engine (engine.py) passes the time and the counts in.

A rule selects cohorts as every flags-file selector does (gateway/cohorts.py): `cohorts =
["android/*/4.11"]`, none for every cohort.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.cohorts import Cohort, Selector, SelectorError, matches_any, old_form, parse_selectors, selectors_from

SIGNALS = ("error_ratio", "failed_lpu_ratio", "mismatch_ratio")
TRIP, HEALTHY, INCONCLUSIVE = "trip", "healthy", "inconclusive"
MAX_RULES = 50
RULE_KEYS = ("signal", "above", "window", "min_sessions", "cohorts")


class GuardrailsError(ValueError):
    """The flags file's [guardrails] table cannot be used; one line naming the problem."""


@dataclass(frozen=True)
class Rule:
    signal: str
    above: float
    window: float = 300.0
    min_sessions: int = 20
    cohorts: tuple[Selector, ...] = ()  # empty: every cohort

    def applies(self, cohort: Cohort) -> bool:
        return not self.cohorts or matches_any(self.cohorts, cohort)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"cohorts": [str(s) for s in self.cohorts]}


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


def _cohorts(rule: dict[str, Any]) -> tuple[Selector, ...]:
    try:
        return parse_selectors(rule.get("cohorts", []), "guardrails.rule.cohorts")
    except SelectorError as exc:
        raise GuardrailsError(str(exc)) from None


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
        if "apps" in raw or "versions" in raw:
            example = selectors_from(raw.get("apps"), None, raw.get("versions"))
            raise GuardrailsError(str(old_form("guardrails.rule", "apps/versions", "cohorts", example)))
        _known(raw, RULE_KEYS, "guardrails.rule")
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
                cohorts=_cohorts(raw),
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


# The decision.


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
