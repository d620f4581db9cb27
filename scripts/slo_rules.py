"""The old path's SLO rules from prometheus/slo.yml: for each objective, its error ratio recorded
over every window an alert needs (`slo:sli_error:ratio_rate<window>{slo="<name>"}`), and one alert
per burn policy that fires when any of the policy's window pairs burns the budget faster than its
rate over both windows (the Google SRE workbook's multiwindow, multi-burn-rate alerts).

What counts as a bad event is here (SLIS); the targets, windows and burn rates are the config's.
scripts/prometheus_rule.py writes the result to prometheus/slo_rules.yml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_UNITS = {"m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """A Prometheus duration of one unit ("5m", "6h", "3d") in seconds."""
    match = re.fullmatch(r"(\d+)([mhd])", duration)
    if match is None:
        raise ValueError(f"unsupported duration {duration!r} (one of m, h, d)")
    return int(match[1]) * _UNITS[match[2]]


def _availability(window: str, objective: dict[str, Any]) -> str:
    # A service that never answered 5xx has no 5xx series: 0 then, not "no data".
    return (
        f'(sum(rate(gateway_old_requests_total{{status_class="5xx"}}[{window}]))\n'
        f"    or 0 * sum(rate(gateway_old_requests_total[{window}])))\n"
        f"  / sum(rate(gateway_old_requests_total[{window}]))\n"
    )


def _time_to_final(window: str, objective: dict[str, Any]) -> str:
    # prometheus_client writes bucket bounds as floats: le="10.0".
    le = repr(float(objective["threshold_seconds"]))
    return (
        "1 - (\n"
        f'  sum(rate(gateway_session_complete_seconds_bucket{{le="{le}"}}[{window}]))\n'
        f"    / sum(rate(gateway_session_complete_seconds_count[{window}]))\n"
        ")\n"
    )


# Each objective's error ratio over a window: bad events / all events.
SLIS: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "availability": _availability,
    "time_to_final": _time_to_final,
}

_SUMMARIES = {
    "availability": "{{ $value | humanizePercentage }} of old-path answers are 5xx (objective: {target} not 5xx)",
    "time_to_final": "{{ $value | humanizePercentage }} of sessions take over {threshold}s to a final answer "
    "(objective: {target} within {threshold}s)",
}


def alert_name(objective: str, suffix: str) -> str:
    return "Gateway" + "".join(part.title() for part in objective.split("_")) + suffix


def record_name(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window}"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.6g}%"


def _budget(target: float) -> str:
    return f"{1 - target:.6g}"


def _alert(name: str, objective: dict[str, Any], policy: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    period = config["period"]
    budget = _budget(objective["target"])
    pairs = []
    spends = []
    for pair in policy["windows"]:
        threshold = f"{pair['burn']:g} * {budget}"
        pairs.append(
            "(\n"
            f'  {record_name(pair["long"])}{{slo="{name}"}} > {threshold}\n'
            "    and\n"
            f'  {record_name(pair["short"])}{{slo="{name}"}} > {threshold}\n'
            ")"
        )
        share = pair["burn"] * seconds(pair["long"]) / seconds(period)
        spends.append(f"{_percent(share)} in {pair['long']}")
    # Not str.format: the alert templates' own braces stay as they are.
    summary = (
        _SUMMARIES[name]
        .replace("{target}", _percent(objective["target"]))
        .replace("{threshold}", f"{objective.get('threshold_seconds', 0):g}")
    )
    alert = alert_name(name, policy["suffix"])
    return {
        "alert": alert,
        "expr": "\n  or\n".join(pairs) + "\n",
        "for": policy["for"],
        "labels": {"severity": policy["severity"]},
        "annotations": {
            "summary": summary,
            "description": f"At this rate the old path's {name.replace('_', ' ')} SLO spends "
            + " or ".join(spends)
            + f" of its {period} error budget.",
            "runbook_url": f"{config['runbook_base']}#{alert.lower()}",
        },
    }


def slo_rules(config: dict[str, Any]) -> dict[str, Any]:
    """The rule file (its `groups`) for slo.yml's objectives and alert policies."""
    windows = sorted(
        {w for policy in config["alerts"] for pair in policy["windows"] for w in (pair["long"], pair["short"])},
        key=seconds,
    )
    recording = [
        {"record": record_name(window), "labels": {"slo": name}, "expr": SLIS[name](window, objective)}
        for name, objective in config["objectives"].items()
        for window in windows
    ]
    alerts = [
        _alert(name, objective, policy, config)
        for name, objective in config["objectives"].items()
        for policy in config["alerts"]
    ]
    # One group: its rules run in order at each evaluation, so an alert reads the ratios recorded
    # in the same round (across groups the order is not fixed, and the alert's value would lag).
    return {"groups": [{"name": "visit-gateway-slo", "rules": recording + alerts}]}


def with_runbook_base(text: str, base: str) -> str:
    """Rule or rule-test text with every `runbook_url: "…#anchor"` on `base`, the anchor kept."""
    return re.sub(r'runbook_url: "[^"#]*#([a-z0-9-]+)"', lambda m: f'runbook_url: "{base}#{m[1]}"', text)
