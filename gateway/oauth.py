"""OAuth 2.1 resource-server mode (``GATEWAY_OAUTH_*``), built from the MCP SDK's own auth pieces.

The MCP authorization spec makes an HTTP server a *resource server*: it does
not issue tokens, it checks the bearer JWTs an authorization server issued, and
it tells clients where to get one (RFC 9728 protected-resource metadata, linked
from the ``WWW-Authenticate`` header of every 401).  The SDK supplies the
generic parts (``BearerAuthBackend``, ``RequireAuthMiddleware``,
``AuthContextMiddleware``, ``create_protected_resource_routes``) and leaves
the token check to a ``TokenVerifier``; ``JwtVerifier`` is ours: signature
against a configured PEM public key or JWKS file, then issuer, audience,
expiry; required scopes are enforced by ``RequireAuthMiddleware`` (403).

The same paths are protected as with ``GATEWAY_AUTH_TOKEN``: everything but
``/health``, ``/health/ready`` and the metadata document itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl, ConfigDict, TypeAdapter
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.security import OPEN_PATHS
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

WELL_KNOWN_PREFIX = "/.well-known/"
# Issuer identifiers compare as exact strings (RFC 8414/9207): keep "https://host" without a trailing slash.
_URL = TypeAdapter(AnyHttpUrl, config=ConfigDict(url_preserve_empty_path=True))
CLOCK_SKEW_SECONDS = 30


class OAuthConfigError(ValueError):
    """A GATEWAY_OAUTH_* key file that cannot be used; the message names the variable."""


def _load_keys(settings: GatewaySettings) -> dict[str | None, Any]:
    """Signing keys by ``kid``; a single PEM key is stored under None (matches any token)."""
    if settings.oauth_public_key_file is not None:
        path: Path = settings.oauth_public_key_file
        try:
            return {None: load_pem_public_key(path.read_bytes())}
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise OAuthConfigError(f"GATEWAY_OAUTH_PUBLIC_KEY_FILE {path}: not a PEM public key ({exc})") from None
    jwks_path = settings.oauth_jwks_file
    assert jwks_path is not None  # the settings accept OAuth only with one of the two files
    try:
        jwks = jwt.PyJWKSet.from_json(jwks_path.read_text())
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise OAuthConfigError(f"GATEWAY_OAUTH_JWKS_FILE {jwks_path}: not a usable JWK set ({exc})") from None
    keys: dict[str | None, Any] = {key.key_id: key.key for key in jwks.keys}
    if len(jwks.keys) == 1:
        keys.setdefault(None, jwks.keys[0].key)
    return keys


def _scopes(claims: dict[str, Any]) -> list[str]:
    """RFC 9068 ``scope`` (space-separated) or the common ``scp`` list."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [str(item) for item in scp]
    return []


class JwtVerifier:
    """The SDK's ``TokenVerifier`` for JWT access tokens signed by a known key."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._keys = _load_keys(settings)
        self._issuer = settings.oauth_issuer_url
        self._audience = settings.oauth_audience or settings.oauth_resource_url
        self._algorithms = list(settings.oauth_algorithms)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if kid in self._keys else self._keys.get(None)
            if key is None:
                log.info("bearer token refused: unknown key id %r", kid)
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            # TypeError/ValueError: PyJWT's way of saying the token's alg does not fit the key's type.
            log.info("bearer token refused: %s", exc)
            return None
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "unknown"
        return AccessToken(
            token=token,
            client_id=str(client_id),
            scopes=_scopes(claims),
            expires_at=int(claims["exp"]),
            resource=self._audience,
            subject=str(claims["sub"]) if "sub" in claims else None,
            claims={"iss": claims.get("iss")},
        )


class _RequireAuthOutsideOpenPaths:
    """``RequireAuthMiddleware`` on every path except health probes and the metadata document."""

    def __init__(self, app: ASGIApp, *, required_scopes: list[str], resource_metadata_url: AnyHttpUrl) -> None:
        self._open = app
        self._protected = RequireAuthMiddleware(app, required_scopes, resource_metadata_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS and not path.startswith(WELL_KNOWN_PREFIX):
            await self._protected(scope, receive, send)
        else:
            await self._open(scope, receive, send)


def install_oauth(app: FastAPI, settings: GatewaySettings) -> None:
    """Add the metadata route and the authentication middleware (outermost) to ``app``."""
    verifier = JwtVerifier(settings)
    resource = _URL.validate_python(settings.oauth_resource_url)
    issuer = _URL.validate_python(settings.oauth_issuer_url)
    scopes = list(settings.oauth_required_scopes)
    app.router.routes.extend(
        create_protected_resource_routes(
            resource_url=resource, authorization_servers=[issuer], scopes_supported=scopes or None
        )
    )
    metadata_url = build_resource_metadata_url(resource)
    app.add_middleware(_RequireAuthOutsideOpenPaths, required_scopes=scopes, resource_metadata_url=metadata_url)
    app.add_middleware(AuthContextMiddleware)
    app.add_middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier))
    log.info("OAuth resource server: tokens from %s for %s, scopes %s", issuer, resource, scopes or "(none)")
