"""The console over HTTP, as a browser's requests reach it: the sign-in (cookie attributes, the
guess allowance shared with the header, sign-out), bad input answered with a page of its own
(unknown cohort, expired cookie, forged CSRF field, a flags file invalid right now), the JSON
API's errors unchanged, the console on the admin listener when the admin routes are there, and
the page's server time per view."""

from __future__ import annotations

import re
import ssl
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestClient

from gateway.app import create_app, create_metrics_app
from gateway.console import signin
from gateway.http import keys
from gateway.migration.clock import ManualClock
from gateway.sandbox.data import LpuKnobs
from tests.support.console import ADMIN_TOKEN, ALPHA, ALPHA_RAIL, DEMO, console_config, flags, serve, write_history
from tests.support.fake_legacy import start_legacy, write_flags
from tests.support.gateway import GatewayTestServer, bearer, create, patient, poll_until_final, wait_until

HTML = "text/html"


async def _console(aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path, **sections: Any) -> Any:
    """A gateway (memory store, the demo's history) whose alpha guardrail is tripped."""
    broken = patient(LpuKnobs(fault="status"))
    _, upstream_url = await upstream(broken)
    _, legacy_url = await start_legacy(aiohttp_server)
    now = time.time()
    flags_file = tmp_path / "flags.toml"
    write_flags(flags_file, flags(now))
    client = await serve(
        aiohttp_client, console_config(upstream_url, legacy_url, "", flags_file, **sections), ManualClock(now)
    )
    await write_history(client, now)
    alpha = DEMO.HEADERS["alpha"]
    await poll_until_final(client, await create(client, broken.token, **alpha), bearer(broken.token) | alpha)
    rails = client.app[keys.ROLLOUT].guardrails
    await wait_until(lambda: rails.tripped(ALPHA), what="alpha tripped")
    return client


async def _sign_in(client: TestClient) -> str:
    resp = await client.post("/admin/sign-in", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/"
    return resp.cookies[signin.COOKIE].value


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match, "the page's forms carry a CSRF field"
    return match.group(1)


async def test_the_sign_in_exchanges_the_token_for_a_strict_httponly_cookie_once(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(aiohttp_client, aiohttp_server, upstream, tmp_path)
    resp = await client.get("/admin/")
    page = await resp.text()
    assert resp.status == 200 and resp.content_type == HTML and 'type="password"' in page
    assert "script" not in page.lower() and resp.headers["Content-Security-Policy"].startswith("default-src 'none'")

    wrong = await client.post("/admin/sign-in", data={"token": "x" * 40}, allow_redirects=False)
    assert wrong.status == 401 and "not the admin token" in await wrong.text()
    assert signin.COOKIE not in wrong.cookies

    resp = await client.post("/admin/sign-in", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert resp.status == 303
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/admin" in header
    assert f"Max-Age={signin.LIFETIME}" in header
    assert "Secure" not in header, "plain HTTP: a Secure cookie would never come back"
    assert ADMIN_TOKEN not in header and ADMIN_TOKEN not in resp.headers["Location"]

    page = await (await client.get("/admin/")).text()
    assert "Migration console" in page and ADMIN_TOKEN not in page
    out = await client.post("/admin/sign-out", data={"csrf": _csrf(page)}, allow_redirects=False)
    assert out.status == 303 and out.cookies[signin.COOKIE].value == ""
    client.session.cookie_jar.clear()
    assert 'type="password"' in await (await client.get("/admin/")).text()


async def test_wrong_tokens_in_the_form_and_in_the_header_draw_on_one_allowance(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(
        aiohttp_client, aiohttp_server, upstream, tmp_path, rollout={"admin_failures_per_client": 3}
    )
    for _ in range(3):
        resp = await client.post("/admin/sign-in", data={"token": "wrong-" * 6})
        assert resp.status == 401
    paused = await client.post("/admin/sign-in", data={"token": ADMIN_TOKEN})
    assert paused.status == 429 and "try again in" in await paused.text()
    api = await client.get("/admin/rollout", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert api.status == 429 and (await api.json())["message_code"] == "4429"
    metrics = client.app[keys.METRICS].registry
    assert metrics.get_sample_value("gateway_admin_auth_failures_total") == 3


async def test_bad_input_gets_a_page_that_says_what_is_wrong(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(aiohttp_client, aiohttp_server, upstream, tmp_path)
    rails = client.app[keys.ROLLOUT].guardrails
    key = signin.signing_key(ADMIN_TOKEN)

    # An expired cookie: the sign-in again, saying why.
    expired, _ = signin.issue(key, time.time() - signin.LIFETIME - 1)
    resp = await client.get("/admin/", cookies={signin.COOKIE: expired})
    assert resp.status == 200 and "has expired" in await resp.text()
    forged = expired.rsplit(".", 1)[0] + "." + "0" * 64
    resp = await client.get("/admin/", cookies={signin.COOKIE: forged})
    assert 'type="password"' in await resp.text() and "Migration console</h1>" not in await resp.text()

    await _sign_in(client)
    # An unknown cohort.
    resp = await client.get("/admin/guardrails/nobody%3A0.0/rearm")
    text = await resp.text()
    assert resp.status == 404 and resp.content_type == HTML and "No such cohort" in text and "nobody:0.0" in text
    resp = await client.get(f"/admin/guardrails/{quote('nobody/web/1.0', safe='')}/rearm")
    assert resp.status == 404 and "No such cohort" in await resp.text()
    # A forged CSRF field: nothing is done.
    confirm = await client.get(f"/admin/guardrails/{quote(ALPHA_RAIL, safe='')}/rearm")
    assert confirm.status == 200 and f"Yes, re-arm {ALPHA_RAIL}" in await confirm.text()
    resp = await client.post(
        f"/admin/guardrails/{quote(ALPHA_RAIL, safe='')}/rearm", data={"csrf": "f" * 64}, allow_redirects=False
    )
    assert resp.status == 403 and "not from the console" in await resp.text()
    assert rails.tripped(ALPHA)
    # The real one re-arms, once; again is a clear 409.
    csrf = _csrf(await confirm.text())
    resp = await client.post(
        f"/admin/guardrails/{quote(ALPHA_RAIL, safe='')}/rearm", data={"csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 303 and not rails.tripped(ALPHA)
    resp = await client.post(
        f"/admin/guardrails/{quote(ALPHA_RAIL, safe='')}/rearm", data={"csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 409 and "nothing to re-arm" in await resp.text()
    # A method the page does not answer.
    resp = await client.delete("/admin/")
    assert resp.status == 405 and resp.content_type == HTML
    for page in (await (await client.get("/admin/")).text(),):
        assert "Traceback" not in page


async def test_a_flags_file_invalid_right_now_is_said_at_the_top_of_the_page(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(aiohttp_client, aiohttp_server, upstream, tmp_path)
    rollout = client.app[keys.ROLLOUT]
    assert rollout.file is not None
    write_flags(Path(rollout.file.path), 'version = "broken"\nmode = "sideways"\n')
    assert not await rollout.reload(force=True)
    await _sign_in(client)
    resp = await client.get("/admin/")
    page = await resp.text()
    assert resp.status == 200
    assert 'id="flags-invalid"' in page and "The flags file is invalid right now" in page
    assert "mode" in page.split('id="flags-invalid"', 1)[1].split("</p>", 1)[0]
    assert "still version <code>migration-demo</code>" in page


async def test_the_json_api_keeps_its_standard_errors(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(aiohttp_client, aiohttp_server, upstream, tmp_path)
    await _sign_in(client)
    # The cookie is the console's: the API still wants its header.
    resp = await client.get("/admin/rollout")
    assert resp.status == 404 and (await resp.json())["message_code"] == "4414"


async def test_the_console_is_on_the_admin_listener_when_the_admin_routes_are(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(
        aiohttp_client, aiohttp_server, upstream, tmp_path, rollout={"admin_on_metrics_port": True}, metrics={"port": 1}
    )
    resp = await client.get("/admin/")
    assert resp.status == 404 and (await resp.json())["message_code"] == "4414"
    listener = await aiohttp_client(create_metrics_app(client.app))
    resp = await listener.get("/admin/")
    assert resp.status == 200 and 'type="password"' in await resp.text()


async def test_the_page_server_time_per_view(
    aiohttp_client: Any, aiohttp_server: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await _console(aiohttp_client, aiohttp_server, upstream, tmp_path)
    await _sign_in(client)
    timings = []
    for _ in range(20):
        resp = await client.get("/admin/")
        assert resp.status == 200
        timings.append(float(resp.headers["Server-Timing"].split("=", 1)[1]))
    print(f"\nconsole page, 3 cohorts x 46 days, memory ledger: median {statistics.median(timings):.1f} ms per view")


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a throwaway certificate for 127.0.0.1 (openssl, a Debian package)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_over_tls_the_sign_in_cookie_is_secure(aiohttp_server: Any, upstream: Any, tmp_path: Path) -> None:
    """Served over TLS, the cookie carries Secure, so a browser never sends it in the clear."""
    context = _self_signed(tmp_path)
    _, upstream_url = await upstream(patient(None))
    _, legacy_url = await start_legacy(aiohttp_server)
    flags_file = tmp_path / "flags.toml"
    write_flags(flags_file, flags(time.time(), rule=False))
    app = create_app(console_config(upstream_url, legacy_url, "", flags_file))
    server = GatewayTestServer(app, host="127.0.0.1", scheme="https")
    await server.start_server(ssl=context)
    try:
        async with aiohttp.ClientSession() as session:
            url = server.make_url("/admin/sign-in")
            resp = await session.post(url, data={"token": ADMIN_TOKEN}, allow_redirects=False, ssl=False)
            assert resp.status == 303
            header = resp.headers["Set-Cookie"]
            assert "Secure" in header and "HttpOnly" in header and "SameSite=Strict" in header
    finally:
        await server.close()
