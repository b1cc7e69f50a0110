"""Staff bearer tokens: random, shown once, stored only as a SHA-256 digest.

Tokens carry 256 bits of randomness, so a fast hash is enough (no password stretching needed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "slt_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    """A customer session's secret (the widget keeps it with the session id; the server only its digest)."""
    return secrets.token_urlsafe(32)


def token_matches(token: str | None, digest: str | None) -> bool:
    """Whether `token` is the secret whose digest is `digest` (constant time; no digest: nothing matches)."""
    return bool(token) and digest is not None and hmac.compare_digest(hash_token(token or ""), digest)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
