"""The table: each figure next to its ceiling or baseline from the same run, the ratio, the
target and whether it holds."""

from __future__ import annotations

from typing import Any


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _rate(n: float) -> str:
    return f"{n:,.0f}"


def _verdict(holds: bool | None) -> str:
    return "—" if holds is None else ("holds" if holds else "**misses**")


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    out: list[tuple[str, str, str, str, str, str]] = []
    targets = {1: 10.0, 20: 50.0}
    for concurrent in (1, 20, 100):
        both = results.get(f"overhead_{concurrent}")
        if both is None:
            continue
        r, c = both["gateway"], both["ceiling"]
        target = targets.get(concurrent)
        out.append(
            (
                f"fan-out overhead, {concurrent} concurrent session{'s' if concurrent > 1 else ''} × 10 LPUs "
                f"(upstream delay 100 ms; slowest call {r['slowest_call_ms']:.0f} ms subtracted), p50 / p95 / p99",
                f"{r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} ms",
                f"plain aiohttp client, same calls: {c['p50']:.1f} / {c['p95']:.1f} / {c['p99']:.1f} ms",
                f"{r['p99'] / c['p99']:.2f} (p99)" if c["p99"] > 0 else "—",
                f"p99 ≤ {target:.0f} ms" if target else "—",
                _verdict(r["p99"] <= target if target else None),
            )
        )
    if "calls" in results:
        g, c = results["calls"]["gateway"], results["calls"]["ceiling"]
        ratio = g["per_cpu_s"] / c["per_cpu_s"]
        out.append(
            (
                "upstream calls/s per gateway core during fan-out (10-LPU sessions, 8 in flight, instant upstream)",
                f"{_rate(g['per_cpu_s'])} per CPU-s ({_rate(g['per_s'])}/s wall; gateway {g['gateway_busy']:.0%}, "
                f"upstream {g['upstream_busy']:.0%} busy)",
                f"plain aiohttp client: {_rate(c['per_cpu_s'])} per CPU-s ({_rate(c['per_s'])}/s wall; "
                f"upstream ~{c['upstream_busy']:.0%} busy)",
                f"{ratio:.2f}",
                "≥ 0.8",
                _verdict(ratio >= 0.8),
            )
        )
    if "polls" in results:
        g, c = results["polls"]["gateway"], results["polls"]["ceiling"]
        ratio = g["per_cpu_s"] / c["per_cpu_s"]
        out.append(
            (
                f"polls/s of a finished 5-LPU session ({_kib(g['bytes'])}), 16 connections",
                f"{_rate(g['per_cpu_s'])} per CPU-s ({_rate(g['per_s'])}/s wall)",
                f"bare aiohttp handler, same bytes: {_rate(c['per_cpu_s'])} per CPU-s ({_rate(c['per_s'])}/s wall)",
                f"{ratio:.2f}",
                "≥ 0.8",
                _verdict(ratio >= 0.8),
            )
        )
    if "creates" in results:
        g, c = results["creates"]["gateway"], results["creates"]["ceiling"]
        ratio = g["per_cpu_s"] / c["per_cpu_s"]
        out.append(
            (
                "sessions created/s, 5 LPUs, instant upstream, 16 in flight (until all-terminal)",
                f"{_rate(g['per_s'])}/s wall ({_rate(g['per_cpu_s'])} per CPU-s)",
                "bare handler making the same 16 upstream calls: "
                f"{_rate(c['per_s'])}/s wall ({_rate(c['per_cpu_s'])} per CPU-s)",
                f"{ratio:.2f}",
                "— (no target)",
                "—",
            )
        )
    if "memory" in results:
        r = results["memory"]
        ratio = r["per_session"] / r["json"]
        out.append(
            (
                f"memory per cached 5-LPU session (RSS delta over {r['sessions']:.0f} polled sessions)",
                _kib(r["per_session"]),
                f"its JSON: {_kib(r['json'])}",
                f"{ratio:.2f}",
                "≤ 2",
                _verdict(ratio <= 2),
            )
        )
    off, on = results.get("amplification_0"), results.get("amplification_60")
    if on is not None:
        out.append(
            (
                f"upstream amplification: {on['patients']:.0f} patients (5 LPUs) each open the screen "
                f"{on['opens']:.0f} times within 3 s (all within a minute); upstream calls ÷ one fan-out per patient",
                f"{on['amplification']:.2f} (reuse window 60 s; {on['per_session']:.1f} calls per session)",
                f"window off: {off['amplification']:.2f} ({off['per_session']:.1f} calls per session)" if off else "—",
                "—",
                "1.0",
                _verdict(on["amplification"] <= 1.0),
            )
        )
    return out


def render(machine: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [
        f"visit-gateway benchmark, {machine['date']}",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}; "
        f"Python {machine['python']}, aiohttp {machine['aiohttp']}, {machine['loop']}, {machine['json']}",
        f"- load average (1/5/15 min) before: {machine['load_before']}, after: {machine['load_after']}; "
        f"{machine['duration_s']} s; each figure is the median of {machine['runs']} runs; "
        f"upstream pool for the overhead figure: {machine['pool']} connections",
        "",
        "| figure | gateway | ceiling / baseline (same run) | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)
