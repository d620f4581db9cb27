"""The console's sign-in: the admin token, entered once, is exchanged for a cookie that says
"signed in until T", signed with HMAC-SHA256. The key is derived from the admin token, so every
replica accepts the cookie any of them issued, and changing `rollout.admin_token` signs everybody
out. The cookie holds no token and nothing secret: an expiry, a random id and the signature.

The forms' CSRF field is derived from the cookie's id with the same key: a page of another
origin can neither read it nor compute it (and `SameSite=Strict` keeps the cookie off its
requests in the first place).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

COOKIE = "vg_console"
# A working shift: long enough not to sign an operator out during a brownout, short enough that
# a cookie left on a shared machine stops working the same day.
LIFETIME = 8 * 3600
VALID, EXPIRED, INVALID = "valid", "expired", "invalid"


def signing_key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"visit-gateway/console-cookie", hashlib.sha256).digest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Signin:
    expires: int
    nonce: str

    def csrf(self, key: bytes) -> str:
        return _mac(key, "csrf", self.nonce)


def issue(key: bytes, now: float, lifetime: int = LIFETIME) -> tuple[str, Signin]:
    """(cookie value, what it says) for a sign-in at `now`."""
    signin = Signin(int(now) + lifetime, secrets.token_hex(16))
    return f"{signin.expires}.{signin.nonce}.{_mac(key, 'cookie', str(signin.expires), signin.nonce)}", signin


def check(key: bytes, value: str | None, now: float) -> tuple[str, Signin | None]:
    """(VALID, the sign-in), (EXPIRED, None) for a genuine cookie past its time, else (INVALID,
    None): no cookie, a forged one, or one signed under another admin token."""
    parts = (value or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return INVALID, None
    expires, nonce, mac = parts
    if not hmac.compare_digest(mac.encode(), _mac(key, "cookie", expires, nonce).encode()):
        return INVALID, None
    if int(expires) <= now:
        return EXPIRED, None
    return VALID, Signin(int(expires), nonce)


def csrf_ok(key: bytes, signin: Signin, given: str | None) -> bool:
    return hmac.compare_digest((given or "").encode("utf-8", "surrogateescape"), signin.csrf(key).encode())
