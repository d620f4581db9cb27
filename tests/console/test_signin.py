"""The sign-in cookie: valid until its expiry, refused when forged, signed under another token or
altered, and a CSRF field bound to the sign-in it came with."""

from __future__ import annotations

from gateway.console import signin

KEY = signin.signing_key("a" * 32)


def test_a_cookie_is_valid_until_it_expires_then_says_so() -> None:
    value, issued = signin.issue(KEY, 1000.0, lifetime=60)
    assert signin.check(KEY, value, 1059.0) == (signin.VALID, issued)
    assert signin.check(KEY, value, 1060.0) == (signin.EXPIRED, None)


def test_forged_altered_or_foreign_cookies_are_invalid() -> None:
    value, _ = signin.issue(KEY, 1000.0)
    expires, nonce, mac = value.split(".")
    for bad in (
        None,
        "",
        "junk",
        f"{int(expires) + 3600}.{nonce}.{mac}",  # a later expiry, same signature
        f"{expires}.{nonce}.{'0' * 64}",
        f"{expires}.{nonce}",
        signin.issue(signin.signing_key("b" * 32), 1000.0)[0],  # another admin token's
    ):
        assert signin.check(KEY, bad, 1001.0) == (signin.INVALID, None), bad
    assert "a" * 32 not in value


def test_the_csrf_field_belongs_to_its_sign_in() -> None:
    _, one = signin.issue(KEY, 1000.0)
    _, other = signin.issue(KEY, 1000.0)
    assert signin.csrf_ok(KEY, one, one.csrf(KEY))
    assert not signin.csrf_ok(KEY, one, other.csrf(KEY))
    assert not signin.csrf_ok(KEY, one, None) and not signin.csrf_ok(KEY, one, "\udcff")
