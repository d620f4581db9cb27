"""Deprecation signals: the header values checked against the RFCs' grammar and examples byte
for byte, the flags file's [migration] table refused when wrong, and the headers on the old-path
answers of exactly the cohort they name."""

from __future__ import annotations

import datetime
import email.utils
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.cohorts import Cohort
from gateway.migration.clock import ManualClock
from gateway.migration.signals import SignalsError, deprecation_value, link_value, parse_migration, sunset_value
from gateway.rollout.flags import FlagsError, parse_flags
from gateway.sandbox.data import SandboxPatient, demo_lpu
from tests.support.gateway import TICKETS, new_token
from tests.support.migration import T0, call, migration_config, serve

# RFC 9651 §3.3.7 (sf-date = "@" sf-integer), as RFC 9745 §2.1 uses it for Deprecation.
SF_DATE = re.compile(r"@-?[0-9]{1,15}")
# RFC 9110 §5.6.7 IMF-fixdate: day-name "," SP date1 SP time-of-day SP GMT.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
# RFC 8288 §3: link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param ), comma-separated.
LINK_VALUE = r'<[^<>\s"]+>; rel="(deprecation|sunset)"'
LINK = re.compile(rf"{LINK_VALUE}(, {LINK_VALUE})*")


def test_header_values_are_the_rfcs_examples_byte_for_byte() -> None:
    # RFC 9745 §2.1's example: "Deprecation: @1688169599" (2023-06-30T23:59:59Z).
    assert deprecation_value(1688169599) == "@1688169599"
    # RFC 8594 §3's example is "Sunset: Sat, 31 Dec 2018 23:59:59 GMT", but 2018-12-31 was a
    # Monday, and IMF-fixdate's day-name is the date's own: the rest is the example's bytes.
    assert datetime.date(2018, 12, 31).strftime("%a") == "Mon"
    assert sunset_value(1546300799) == "Mon, 31 Dec 2018 23:59:59 GMT"
    # RFC 9745 §3's example link, and RFC 8594 §6's relation type.
    assert link_value([("https://developer.example.com/deprecation", "deprecation")]) == (
        '<https://developer.example.com/deprecation>; rel="deprecation"'
    )
    assert link_value([("https://a.example/d", "deprecation"), ("https://a.example/s", "sunset")]) == (
        '<https://a.example/d>; rel="deprecation", <https://a.example/s>; rel="sunset"'
    )


@pytest.mark.parametrize("when", [0, 1, 951782400, 1709164800, 1793577600, 4102444799])
def test_header_values_follow_the_grammar_and_parse_back(when: int) -> None:
    assert SF_DATE.fullmatch(deprecation_value(when)) and int(deprecation_value(when)[1:]) == when
    value = sunset_value(when)
    assert IMF_FIXDATE.fullmatch(value), value
    assert int(email.utils.parsedate_to_datetime(value).timestamp()) == when


FLAGS = """
version = 1
[migration]
link = "https://example.org/migrate"

[[migration.deprecation]]
cohorts = ["beta/*/4.9"]
deprecated = 2023-06-30T23:59:59Z
sunset = 2027-01-01T00:00:00+03:00
sunset_link = "https://example.org/sunset?app=beta"

[[migration.deprecation]]
cohorts = ["gamma/*/*"]
deprecated = 1793577600
link = "https://example.org/gamma"
"""


def test_the_flags_file_gives_each_cohort_its_headers() -> None:
    flags = parse_flags(FLAGS.encode(), "legacy").migration
    assert flags.headers_for(Cohort("beta", "ios", "4.9")) == (
        ("Deprecation", "@1688169599"),
        ("Sunset", "Thu, 31 Dec 2026 21:00:00 GMT"),
        (
            "Link",
            '<https://example.org/migrate>; rel="deprecation", <https://example.org/sunset?app=beta>; rel="sunset"',
        ),
    )
    assert flags.headers_for(Cohort("gamma", "web", "other")) == (
        ("Deprecation", "@1793577600"),
        ("Link", '<https://example.org/gamma>; rel="deprecation"'),
    )
    assert flags.headers_for(Cohort("beta", "ios", "5.0")) == ()
    assert flags.headers_for(Cohort("alpha", "android", "4.9")) == ()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("[migration]\nlnik = 'x'", "migration: unknown key 'lnik'"),
        ("[[migration.deprecation]]\ncohorts = ['beta/*/*']", "deprecated is required"),
        (
            "[[migration.deprecation]]\ncohorts = ['beta/*/*']\ndeprecated = 2026-01-01T00:00:00",
            "must have a UTC offset",
        ),
        (
            "[[migration.deprecation]]\ncohorts = ['beta/*/*']\ndeprecated = 20\nsunset = 10",
            "sunset must not be before",
        ),
        ("[[migration.deprecation]]\ncohorts = ['beta/*/*']\ndeprecated = 1\nlink = 'https://x/a b'", "RFC 3986"),
        ("[[migration.deprecation]]\ncohorts = ['beta/*/*']\ndeprecated = 1\nlink = 'https://x/>; rel=x'", "RFC 3986"),
        ("[[migration.deprecation]]\ncohorts = ['be ta/*/*']\ndeprecated = 1", "'be ta/*/*' is not a cohort selector"),
        ("[[migration.deprecation]]\ncohorts = []\ndeprecated = 1", "cohorts must name at least one cohort"),
        ("[[migration.deprecation]]\ndeprecated = 1", "cohorts is required"),
        ("[[migration.deprecation]]\napp = 'beta'\nversions = ['4.9']\ndeprecated = 1", 'cohorts = ["beta/*/4.9"]'),
        ("[[migration.brownout]]\nname = 'b'\ncohorts = ['beta/*/*']\nstart = 1", "needs start and duration"),
        ("[[migration.brownout]]\nname = 'b'\ncohorts = ['beta/*/*']\nstart = 1\nduration = 4e7", "duration must be"),
        ("[[migration.brownout]]\nname = 'b'\ncohorts = ['beta/*/*']\nstart = 1\nduration = 9\nshare = 0", "above 0"),
        (
            "[[migration.brownout]]\nname = 'b'\ncohorts = ['beta/*/*']\nstart = 1\nduration = 9\nmode = 'off'",
            "mode must",
        ),
        (
            "[[migration.brownout]]\nname = 'b'\ncohorts = ['beta/*/*']\nstart = 1\nduration = 9\ndelay = 60",
            "delay must",
        ),
    ],
)
def test_a_wrong_migration_table_is_a_flags_file_error(table: str, problem: str) -> None:
    tomllib.loads(table)  # valid TOML: the problem is the table's
    with pytest.raises(FlagsError, match=re.escape(problem)):
        parse_flags(table.encode(), "legacy")
    with pytest.raises(SignalsError):
        parse_migration(tomllib.loads(table)["migration"])


async def test_old_path_answers_of_the_named_cohort_carry_the_headers(
    upstream: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    token = new_token()
    _, url = await upstream(SandboxPatient(token, [demo_lpu(1)]))
    client = await serve(aiohttp_client, migration_config(url, tmp_path, FLAGS), ManualClock(T0))
    signals = ("Deprecation", "Sunset", "Link")

    status, body, headers = await call(client, "beta", token)
    assert status == 200
    assert headers["Deprecation"] == "@1688169599" and headers["Sunset"] == "Thu, 31 Dec 2026 21:00:00 GMT"
    assert LINK.fullmatch(headers["Link"]) and headers.getall("Link") == [headers["Link"]]
    status, _, headers = await call(client, "beta", None, f"{TICKETS}/{body['session']}")
    assert status == 200 and headers["Deprecation"] == "@1688169599"
    # An error answer is an old-path answer too: the app learns it is deprecated either way.
    status, _, headers = await call(client, "beta", None)
    assert status == 401 and headers["Deprecation"] == "@1688169599"
    status, _, headers = await call(client, "gamma", token)
    assert status == 200 and headers["Deprecation"] == "@1793577600" and "Sunset" not in headers
    for app in ("alpha", "stranger"):
        status, _, headers = await call(client, app, token)
        assert status == 200 and not any(name in headers for name in signals), app
    # Off the old path nothing changes.
    resp = await client.get("/healthz", headers={"ClientApplication": "b2b2b2b2-1b8f-4c5b-8d1e-1c0f3b0e5a11"})
    assert not any(name in resp.headers for name in signals)
