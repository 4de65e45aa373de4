"""OpenID Connect bearer tokens: signature by the issuer's JWKS, issuer, audience and expiry.

Claims used: ``preferred_username`` (else ``sub``) names the user, ``trust`` the organisation
(ODS-style code of a registered trust) and ``roles`` the Solent roles (a list).
"""

from __future__ import annotations

from typing import Any

import jwt

from solent.security.tokens import TokenInvalid

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, jwks_url: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)

    def verify(self, token: str) -> dict[str, Any]:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenInvalid("the token has expired") from exc
        except jwt.PyJWKClientError as exc:
            raise TokenInvalid(
                f"the token's signing key is not in the issuer's JWKS: {exc}"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"the token is not valid: {type(exc).__name__}") from exc
        return claims
