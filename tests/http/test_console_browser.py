"""The migration console in a real browser: Debian's Chromium, driven by Playwright, against two
gateways sharing a real Redis that holds the migration demo's 46 days. Signs in with the form,
reads every cohort's burndown (one bar per day, the ledger's numbers) and verdict (the report's),
re-arms the tripped guardrail through the confirmation step and sees it armed on the other
replica; the whole run with JavaScript off, then the page once more with it on; any console
error fails the test. Screenshots go to test-artifacts/ (CI keeps that folder)."""

from __future__ import annotations

import datetime
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from gateway.http import keys
from gateway.migration.clock import ManualClock
from gateway.sandbox.data import LpuKnobs
from tests.support.console import (
    ADMIN_TOKEN,
    ALPHA,
    ALPHA_RAIL,
    ARTIFACTS,
    COHORTS,
    DEMO,
    console_config,
    flags,
    planned,
    serve,
    write_history,
)
from tests.support.fake_legacy import start_legacy, write_flags
from tests.support.gateway import bearer, create, patient, poll_until_final, wait_until

CHROMIUM = "/usr/bin/chromium"
WIDE, NARROW = {"width": 1440, "height": 1000}, {"width": 390, "height": 844}


class Watched:
    """A page whose console errors and visited URLs are kept, for the assertions at the end."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.timings: list[float] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def _response(self, response: Any) -> None:
        timing = response.headers.get("server-timing", "")
        if timing.startswith("page;dur="):
            self.timings.append(float(timing.split("=", 1)[1]))


async def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


async def _browser(pw: Any) -> Browser:
    return await pw.chromium.launch(executable_path=CHROMIUM)


@pytest.mark.timeout(170)
async def test_the_console_in_chromium(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, redis_server: Any, tmp_path: Path
) -> None:
    broken = patient(LpuKnobs(fault="status"))
    _, upstream_url = await upstream(broken)
    _, legacy_url = await start_legacy(aiohttp_server)
    now = time.time()
    clock = ManualClock(now)
    flags_file = tmp_path / "flags.toml"
    write_flags(flags_file, flags(now))
    config = console_config(upstream_url, legacy_url, redis_server.url, flags_file)
    a, b = [await serve(aiohttp_client, config, clock) for _ in range(2)]
    await write_history(a, now)

    # One failing session of alpha on replica A trips alpha's guardrail, on both replicas.
    alpha = DEMO.HEADERS["alpha"]
    guid = await create(a, broken.token, **alpha)
    await poll_until_final(a, guid, bearer(broken.token) | alpha)
    rails = [c.app[keys.ROLLOUT].guardrails for c in (a, b)]
    await wait_until(lambda: all(r.tripped(ALPHA) for r in rails), what="alpha tripped on both replicas")
    resp = await a.get("/admin/migration", headers={"X-Admin-Token": ADMIN_TOKEN})
    report = await resp.json()
    base_a, base_b = (str(c.make_url("/admin/")) for c in (a, b))

    async with async_playwright() as pw:
        browser = await _browser(pw)
        context = await browser.new_context(viewport=WIDE, java_script_enabled=False)
        watched = Watched(await context.new_page())
        page = watched.page

        # Sign in: the form, once; the token goes in the body, the answer is a cookie.
        await page.goto(base_a)
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Migration console", exact=True)).to_be_visible()
        [cookie] = await context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
        assert ADMIN_TOKEN not in cookie["value"]

        # Every cohort of the report: its chart has one bar per day of the 46, with the ledger's
        # numbers, and its verdict reads as the report's.
        verdicts = {c["cohort"]: c["verdict"] for c in report["cohorts"]}
        assert verdicts == {
            "alpha/android/5.0": "active",
            "beta/ios/4.9": "fading",
            "gamma/web/3.1": "silent for 12 days",
        }
        rows = page.locator("tr.cohort")
        await expect(rows).to_have_count(len(report["cohorts"]))
        for entry in report["cohorts"]:
            row = page.locator(f'tr.cohort[data-cohort="{entry["cohort"]}"]')
            await expect(row.locator("td.verdict")).to_have_text(entry["verdict"])
            bars = row.locator("svg.burndown rect.day")
            await expect(bars).to_have_count(DEMO.HISTORY_DAYS)
            shown = [int(v) for v in await bars.evaluate_all("els => els.map(e => e.dataset.requests)")]
            expected = planned(entry["app"], now, DEMO.HISTORY_DAYS)
            # Today also holds what the report counted since (alpha's failing session).
            expected[-1] = entry["daily"].get(report["today"], {}).get("requests", 0)
            assert shown == expected, entry["cohort"]
            dates = await bars.evaluate_all("els => els.map(e => e.dataset.date)")
            assert dates[-1] == report["today"] and len(set(dates)) == DEMO.HISTORY_DAYS
            assert await row.locator("svg.burndown > title").count() == 1
        beta = page.locator('tr.cohort[data-cohort="beta/ios/4.9"]')
        await expect(beta).to_contain_text("beta-tomorrow")
        await expect(beta).to_contain_text("sunset " + _day(now + 60 * 86400))
        await expect(page.locator("#flags-invalid")).to_have_count(0)

        # Filtered by app and sorted, with the form (no script): query parameters.
        await page.get_by_label("App").select_option("beta")
        await page.get_by_label("Sort by").select_option("share")
        await page.get_by_role("button", name="Show").click()
        await expect(rows).to_have_count(1)
        assert "app=beta" in page.url and "sort=share" in page.url
        await page.goto(base_a + "?sort=share")
        order = await rows.evaluate_all("els => els.map(e => e.dataset.cohort)")
        by_share = sorted(report["cohorts"], key=lambda c: -c["share_30d"])
        assert order == [c["cohort"] for c in by_share]

        await page.goto(base_a)
        alpha_row = page.locator(f'tr.cohort[data-cohort="{COHORTS["alpha"]}"]')
        await expect(alpha_row.locator("td.guardrail")).to_contain_text("tripped")
        await _shot(page, "console-wide.png")
        await page.set_viewport_size(NARROW)
        await _shot(page, "console-narrow.png")
        await page.set_viewport_size(WIDE)

        # Re-arm: the action, a confirmation page, the POST with its CSRF field, the banner.
        await page.locator("#actions").get_by_role("link", name=f"Re-arm {ALPHA_RAIL}…").click()
        await expect(page.get_by_role("heading", name=f"Re-arm the guardrail of {ALPHA_RAIL}?")).to_be_visible()
        await _shot(page, "console-confirm.png")
        await page.get_by_role("button", name=f"Yes, re-arm {ALPHA_RAIL}").click()
        await expect(page.get_by_role("status")).to_contain_text(f"Re-armed {ALPHA_RAIL}")
        await expect(alpha_row.locator("td.guardrail")).to_have_text("armed")

        # The other replica follows the shared board: its page shows the guardrail armed.
        await wait_until(lambda: not rails[1].tripped(ALPHA), what="alpha re-armed on replica B")
        await page.goto(base_b)
        await expect(page.get_by_role("heading", name="Migration console", exact=True)).to_be_visible()
        await expect(alpha_row.locator("td.guardrail")).to_have_text("armed")
        await expect(page.locator("#actions")).to_contain_text("No guardrail is tripped")

        # Server time per view, a few views of the same page (printed: docs/console.md).
        for _ in range(5):
            await page.goto(base_a)
        # Sign out: the cookie is gone and the console asks for the token again.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert await context.cookies() == []

        # With JavaScript on, the same page logs nothing either.
        scripted = await browser.new_context(viewport=WIDE)
        on = Watched(await scripted.new_page())
        await on.page.goto(base_b)
        await on.page.get_by_label("Admin token").fill(ADMIN_TOKEN)
        await on.page.get_by_role("button", name="Sign in").click()
        await expect(on.page.locator("tr.cohort")).to_have_count(len(report["cohorts"]))
        content = await page.content() + await on.page.content()
        await browser.close()

    assert watched.errors == [] and on.errors == [], watched.errors + on.errors
    assert not any(ADMIN_TOKEN in url for url in watched.urls + on.urls)
    assert ADMIN_TOKEN not in content
    timings = watched.timings + on.timings
    print(f"\nconsole page server time per view: median {statistics.median(timings):.1f} ms, max {max(timings):.1f} ms")


def _day(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d")
