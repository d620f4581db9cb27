"""The one cohort: client app, platform and version classification into a closed set of cohorts
from the configured tables, its one text form, and the selectors a flags file names cohorts with."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cohorts import (
    UNKNOWN_COHORT,
    ClientTable,
    Cohort,
    Selector,
    SelectorError,
    app_of,
    parse_selector,
    parse_selectors,
)
from gateway.config import ClientsConfig, Config, ConfigError, MigrationConfig, load_config

ANDROID_GUID = "8B0A7AB4-1B8F-4C5B-8D1E-1C0F3B0E5A11"
TABLE = ClientTable(
    ClientsConfig(
        by_guid={ANDROID_GUID: "android", "0e6f3c53-55a4-4b7e-9d51-31d2b1e1a0c7": "web"},
        by_user_agent={
            r"web-client/(?P<version>[0-9.]+)": "web",
            r"^2dr-ios/(?P<version>[0-9.]+)": "ios",
            r"(?i)android": "android",
            r"^okhttp/": "android-legacy",
        },
        versions=("4.11", "4.12"),
    ),
    MigrationConfig().platforms,
)


@pytest.mark.parametrize(
    ("client_application", "user_agent", "expected"),
    [
        # a known GUID names the app, whatever its case; the version is the UA's first product
        (ANDROID_GUID.lower(), "2dr-android/4.12.3 (Linux; Android 13)", ("android", "4.12")),
        (f" {ANDROID_GUID} ", None, ("android", "unknown")),
        # a pattern names the app; its `version` group gives the version
        (None, "2dr-ios/4.11.0 CFNetwork/1408.0.4 Darwin/22.5.0", ("ios", "4.11")),
        (None, "2dr-ios/3.9 CFNetwork/1408.0.4", ("ios", "other")),
        # first pattern in order wins; versions not in the list are "other"
        (None, "okhttp/4.9.0 android", ("android", "other")),
        (None, "okhttp/4.12.0", ("android-legacy", "4.12")),
        # unknown GUID, but the UA is known: the UA names it
        ("11111111-2222-3333-4444-555555555555", "2dr-ios/4.12", ("ios", "4.12")),
        # a header that names nothing known is "other"; no header at all is "unknown"
        ("11111111-2222-3333-4444-555555555555", None, ("other", "unknown")),
        ("not-a-guid", "", ("other", "unknown")),
        (None, "curl/8.5.0", ("other", "other")),
        (None, "SomeBrowser", ("other", "unknown")),
        (None, None, ("unknown", "unknown")),
        ("", "   ", ("unknown", "unknown")),
        # version cut to major.minor, leading zeros dropped, a "v" allowed
        (None, "okhttp/v04.011.7", ("android-legacy", "4.11")),
    ],
)
def test_classify(client_application: str | None, user_agent: str | None, expected: tuple[str, str]) -> None:
    assert app_of(TABLE, client_application, user_agent) == expected


def test_a_known_guid_skips_the_patterns_of_other_apps() -> None:
    # The GUID says android: the web pattern matches first but names another app, so its
    # version group is not used; the android pattern has none, so the first product's is.
    assert app_of(TABLE, ANDROID_GUID, "okhttp/4.12 web-client/4.11 Android") == ("android", "4.12")
    assert app_of(TABLE, None, "okhttp/4.12 web-client/4.11 Android") == ("web", "4.11")


def test_label_values_are_the_configured_names_plus_other_and_unknown() -> None:
    assert TABLE.apps == ("android", "web", "ios", "android-legacy")
    platforms = {"android", "ios", "web", "other", "unknown"}
    versions = {"4.11", "4.12", "other", "unknown"}
    assert TABLE.cohorts == {Cohort(a, p, v) for a in TABLE.apps for p in platforms for v in versions} | {
        UNKNOWN_COHORT
    }
    assert ClientTable(ClientsConfig(), {}).cohorts == {UNKNOWN_COHORT}


@pytest.mark.parametrize(
    ("client_application", "user_agent", "expected"),
    [
        # the app and version as above, the platform from migration.platforms
        (None, "2dr-ios/4.11.0 CFNetwork/1408.0.4 Darwin/22.5.0", "ios/ios/4.11"),
        (ANDROID_GUID, "2dr-android/4.12.3 (Linux; Android 13)", "android/android/4.12"),
        (ANDROID_GUID, "2dr-app/4.12.3", "android/other/4.12"),
        (ANDROID_GUID, None, "android/unknown/unknown"),
        # every client the table does not name is the one unknown cohort, whatever it sends
        ("11111111-2222-3333-4444-555555555555", "Mozilla/5.0 (Windows NT 10.0)", "unknown/unknown/unknown"),
        (None, "curl/8.5.0", "unknown/unknown/unknown"),
        (None, None, "unknown/unknown/unknown"),
    ],
)
def test_a_request_is_one_cohort_with_one_text_form(
    client_application: str | None, user_agent: str | None, expected: str
) -> None:
    cohort = TABLE.classify(client_application, user_agent)
    assert str(cohort) == expected
    assert cohort in TABLE.cohorts
    assert Cohort.parse(expected) == cohort
    assert TABLE.classify(client_application, user_agent) is cohort, "remembered"


def test_a_text_that_is_not_a_cohort_parses_to_none() -> None:
    for text in ("android:4.11", "a/b", "a/b/c/d", "a//c", ""):
        assert Cohort.parse(text) is None, text


def test_selectors_match_per_part_with_wildcards() -> None:
    beta = Cohort("beta", "ios", "4.9")
    assert parse_selector("beta/*/*", "x").matches(beta)
    assert parse_selector("beta/ios/4.9", "x").matches(beta)
    assert parse_selector("*/*/4.9", "x").matches(beta)
    assert parse_selector("*/*/*", "x").matches(UNKNOWN_COHORT)
    assert not parse_selector("beta/android/*", "x").matches(beta)
    assert not parse_selector("alpha/*/*", "x").matches(beta)
    assert str(parse_selector(" beta/*/4.9 ", "x")) == "beta/*/4.9"
    assert parse_selectors(["beta/*/*", "beta/*/*"], "x") == (Selector("beta"),)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("android:4.11", "allow_cohorts: 'android:4.11' is the old form; write 'android/*/4.11'"),
        ("android", "allow_cohorts: 'android' is not a cohort selector; e.g. android/*/4.11"),
        ("android/*", "is not a cohort selector"),
        ("an droid/*/*", "is not a cohort selector"),
        ("android/i*/*", "is not a cohort selector"),
        (3, "allow_cohorts must hold cohort selectors as strings"),
    ],
)
def test_a_selector_that_is_not_one_names_the_right_form(raw: object, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selectors([raw], "allow_cohorts")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_long_user_agent_is_classified_quickly() -> None:
    # A header at the server's size limit: matching is anchored, it does not scan the header
    # once per position.
    agent = "a" * 8000 + "/1.2"
    assert app_of(TABLE, None, agent) == ("other", "unknown")


def test_clients_tables_load_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[clients]\nversions = ["4.12"]\n'
        '[clients.by_guid]\n"8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11" = "android"\n'
        '[clients.by_user_agent]\n"^2dr-ios/" = "ios"\n'
    )
    config = load_config(env={}, path=path)
    assert config.clients == ClientsConfig(
        by_guid={"8b0a7ab4-1b8f-4c5b-8d1e-1c0f3b0e5a11": "android"},
        by_user_agent={"^2dr-ios/": "ios"},
        versions=("4.12",),
    )
    assert Config().replace(clients={"versions": ["1.0"]}).clients.versions == ("1.0",)


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ({"by_guid": {"android": "android"}}, "clients.by_guid key 'android' is not a GUID"),
        ({"by_guid": {ANDROID_GUID: "other"}}, "app name 'other' must match"),
        ({"by_user_agent": {"^x/": "has space"}}, "app name 'has space' must match"),
        ({"by_user_agent": {"(": "x"}}, "pattern '(' is not a regular expression"),
        ({"by_user_agent": {"^x/": 3}}, "clients.by_user_agent must be a table of strings"),
        ({"versions": ["4.12.1"]}, "versions must be major.minor without leading zeros (got '4.12.1')"),
        ({"versions": ["04.1"]}, "(got '04.1')"),
        ({"versions": "4.12"}, "clients.versions must be a list of strings"),
    ],
)
def test_bad_clients_tables_name_the_problem(clients: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config().replace(clients=clients)
    assert message in str(info.value)
