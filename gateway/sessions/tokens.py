"""What binds a session to its token: a hash, so the token itself is never stored or logged."""

from __future__ import annotations

import hashlib
import hmac


def token_hash(token: str) -> str:
    """What binds a session to its token; the token itself is never stored or logged."""
    return hashlib.sha256(b"visit-gateway/session-token\0" + token.encode()).hexdigest()


def same_hash(stored_hash: str, key: str) -> bool:
    """Whether a poll's token hash (`token_hash` of its token) is the session's, in constant time."""
    return hmac.compare_digest(stored_hash, key)
