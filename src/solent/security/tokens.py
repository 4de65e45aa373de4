"""Local bearer tokens (short-lived signed JWTs) and service API tokens (opaque, hashed at rest)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from solent.security.keys import SigningKey

LOCAL_ISSUER = "solent"
LOCAL_AUDIENCE = "solent"
API_TOKEN_PREFIX = "slt_"  # noqa: S105 (a prefix, not a secret)


class TokenInvalid(Exception):
    """The token is expired, forged, malformed or for someone else; the message says which."""


def issue_local(
    key: SigningKey, user: str, ttl: timedelta, extra: dict[str, Any] | None = None
) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    expires = now + ttl
    claims: dict[str, Any] = {
        **(extra or {}),
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "sub": user,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()) - 5,
        "exp": int(expires.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.private, algorithm=key.algorithm), expires


def verify_local(key: SigningKey, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public,
            algorithms=[key.algorithm],
            audience=LOCAL_AUDIENCE,
            issuer=LOCAL_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("the token has expired; get a new one") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid(f"the token is not valid: {type(exc).__name__}") from exc
    return claims


def unverified_issuer(token: str) -> str | None:
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        return None
    return iss if isinstance(iss, str) else None


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def api_token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
