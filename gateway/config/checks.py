"""The checks of single values: each takes a key's value and returns what is wrong with it (one
phrase that the loader puts after the key's name), or None. Pure functions; nothing here knows
which key it checks or where the value came from.

Also the parsing of a `redis+sentinel://` URL, which its check and the Redis client share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.contract import GUID, OTHER, UNKNOWN


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be from 0 to 1"


def port_number(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def http_url(v: str) -> str | None:
    if not v:
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    return None


@dataclass(frozen=True)
class SentinelTarget:
    """Where `redis+sentinel://[[user]:password@]host:port[,host:port...]/<primary name>[/<db>]` points."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(v: str) -> SentinelTarget:
    """Raises ValueError (without the URL in the message: it may hold a password)."""
    rest = v.removeprefix("redis+sentinel://")
    if rest == v:
        raise ValueError("not a redis+sentinel:// URL")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each sentinel must be host:port")
        sentinels.append((host, int(port)))
    primary, _, db = path.partition("/")
    if not primary or (db and not db.isdigit()):
        raise ValueError("the path must be /<primary name>[/<db>]")
    return SentinelTarget(tuple(sentinels), primary, int(db or 0), unquote(username) or None, unquote(password) or None)


def redis_url(v: str) -> str | None:
    if not v:
        return None
    if v.startswith("redis+sentinel://"):
        try:
            parse_sentinel_url(v)
        except ValueError as exc:
            return f"is not a valid redis+sentinel:// URL: {exc}"
        return None
    parts = urlsplit(v)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        return None
    if parts.scheme == "unix" and parts.path:
        return None
    return "must be a redis://, rediss://, unix:// or redis+sentinel:// URL (or empty for the in-process store)"


def key_prefix(v: str) -> str | None:
    # Braces would turn into Redis Cluster hash tags; whitespace and ':' would make key names ambiguous.
    return None if re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", v) else "must be 1-32 of A-Z a-z 0-9 _ . -"


def url_path(v: str) -> str | None:
    return None if v.startswith("/") else "must start with '/'"


def one_of(*allowed: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in allowed else f"must be one of {', '.join(allowed)}"

    # An enum's values are lower case; "INFO" or "Gateway" (an environment habit) means the same.
    check.choices = allowed  # type: ignore[attr-defined]
    return check


# App names become metric label values: short and plain; "other" and "unknown" are taken.
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_RESERVED_APPS = (OTHER, UNKNOWN)
_VERSION = re.compile(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})")


def _app_name_problem(name: str, kind: str = "app") -> str | None:
    if not _APP_NAME.fullmatch(name) or name in _RESERVED_APPS:
        return f"{kind} name {name!r} must match {_APP_NAME.pattern} and not be other/unknown"
    return None


def apps_by_guid(v: dict[str, str]) -> str | None:
    for guid, name in v.items():
        if not GUID.fullmatch(guid):
            return f"key {guid!r} is not a GUID"
        if problem := _app_name_problem(name):
            return problem
    return None


def names_by_pattern(kind: str) -> Callable[[dict[str, str]], str | None]:
    """The check of a table of regular expression → app (or platform) name."""

    def check(v: dict[str, str]) -> str | None:
        for pattern, name in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"pattern {pattern!r} is not a regular expression ({exc})"
            if problem := _app_name_problem(name, kind):
                return problem
        return None

    return check


def versions(v: tuple[str, ...]) -> str | None:
    bad = [x for x in v if not _VERSION.fullmatch(x)]
    return f"versions must be major.minor without leading zeros (got {bad[0]!r})" if bad else None


ADMIN_TOKEN_MIN_LENGTH = 32
ADMIN_TOKEN_MIN_DISTINCT = 8
ADMIN_TOKEN_MIN_BITS = 80.0


def entropy_bits(v: str) -> float:
    """An estimate of a string's randomness: its length times the Shannon entropy of its
    characters. A repeated or patterned word scores low; 32 random hex digits score about 110."""
    counts = [v.count(c) for c in set(v)]
    return -sum(n * math.log2(n / len(v)) for n in counts) if v else 0.0


def admin_token(v: str) -> str | None:
    # A guessable admin token would make the inspection endpoint public: it must look random.
    if not v:
        return None
    periodic = v in (v + v)[1:-1]  # a shorter string repeated: "0123456789abcdef" * 2
    weak = len(set(v)) < ADMIN_TOKEN_MIN_DISTINCT or entropy_bits(v) < ADMIN_TOKEN_MIN_BITS or periodic
    if len(v) < ADMIN_TOKEN_MIN_LENGTH or weak:
        return (
            f"must be empty (no admin endpoint) or a random string of at least {ADMIN_TOKEN_MIN_LENGTH} characters"
            " (e.g. `openssl rand -hex 32`)"
        )
    return None


def fraction_of_capacity(v: float) -> str | None:
    """A part of a capacity, not none of it: limits.token_share of session.max_sessions."""
    return None if 0 < v <= 1 else "must be a fraction in (0, 1]"


def share_of_traffic(v: float) -> str | None:
    """A share of traffic: migration.fading_ratio and the brownout guards' max_share, max_error_rate."""
    return None if 0 < v <= 1 else "must be a share in (0, 1]"


def flush_interval(v: float) -> str | None:
    # The ledger's promise: at most one Redis round trip per replica per second.
    return None if v >= 1.0 else "must be >= 1.0 (seconds)"


def days(v: int) -> str | None:
    return None if 1 <= v <= 3650 else "must be 1..3650 days"
