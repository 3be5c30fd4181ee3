"""The one reader of `Authorization: Bearer <token>` (RFC 6750 §2.1), for the api, the matcher's
handshakes and the operator surfaces. The scheme is case-insensitive; the token is not."""

from __future__ import annotations


def bearer_token(authorization: str | None) -> str | None:
    """The token in an Authorization header's value, or None when it holds no bearer token."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
