"""Who may call the gateway: a static bearer token, or OAuth resource-server mode with signed JWTs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.oauth import JwtVerifier
from gateway.settings import GatewaySettings
from tests.procs import Proc, gateway_proc, http_json, running

pytestmark = pytest.mark.e2e
TOKEN = "s3cret-token-for-tests"
ISSUER = "https://auth.example.test"
SCOPE = "mcp:tools"
MCP_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


def _raw(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return http_json(method, url, body, headers={**MCP_HEADERS, **(headers or {})})


async def _mcp_round_trip(url: str, headers: dict[str, str], mode: str) -> tuple[list[str], Any]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        names = [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("hash_content", {"data": "auth"})
    return names, result


# -- a static bearer token ------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    gateway = gateway_proc(tmp_path_factory.mktemp("token"), GATEWAY_AUTH_TOKEN=TOKEN)
    with running(gateway):
        yield gateway


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_official_client_with_the_token_works(token_gateway: Proc, mode: str) -> None:
    url = token_gateway.extra["url"] + "/mcp"
    names, result = anyio.run(_mcp_round_trip, url, {"authorization": f"Bearer {TOKEN}"}, mode)
    assert "hash_content" in names and not result.is_error


@pytest.mark.parametrize("presented", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/mcp", MCP_INIT),
        ("GET", "/mcp", None),
        ("GET", "/tools/list", None),
        ("POST", "/tools/execute/echo", {"message": "x"}),
        ("GET", "/mcp/tools/list", None),
        ("POST", "/mcp/tools/call", {"name": "echo", "arguments": {"message": "x"}}),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ],
)
def test_everything_but_health_needs_the_token(
    token_gateway: Proc, presented: str | None, method: str, path: str, body: Any
) -> None:
    headers = {"authorization": presented} if presented is not None else {}
    status, answer = _raw(token_gateway.extra["url"] + path, method, body, headers)
    assert status == 401, (path, presented, status, answer)
    assert answer == {"error": "missing or invalid bearer token"}


def test_401_carries_a_bearer_challenge(token_gateway: Proc) -> None:
    import urllib.error
    import urllib.request

    for presented, error in [(None, False), ("Bearer nope", True)]:
        request = urllib.request.Request(token_gateway.extra["url"] + "/tools/list")
        if presented:
            request.add_header("authorization", presented)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        caught.value.close()
        challenge = caught.value.headers["www-authenticate"]
        assert caught.value.code == 401 and challenge.startswith("Bearer realm=")
        assert ('error="invalid_token"' in challenge) is error


def test_with_the_token_rest_and_metrics_answer(token_gateway: Proc) -> None:
    url, auth = token_gateway.extra["url"], {"authorization": f"Bearer {TOKEN}"}
    assert _raw(url + "/tools/execute/echo", "POST", {"message": "hi"}, auth)[0] == 200
    assert _raw(url + "/mcp/tools/call", "POST", {"name": "echo", "arguments": {"message": "x"}}, auth)[0] == 200
    status, text = _raw(url + "/metrics", headers=auth)
    assert status == 200 and "gateway_tool_calls_total" in text


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
def test_official_client_without_the_token_is_refused(token_gateway: Proc, headers: dict[str, str]) -> None:
    seen: list[tuple[int, str | None]] = []

    async def record(response: Any) -> None:
        seen.append((response.status_code, response.headers.get("www-authenticate")))

    async def attempt() -> None:
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            http.event_hooks["response"].append(record)
            async with Client(streamable_http_client(token_gateway.extra["url"] + "/mcp", http_client=http)) as client:
                await client.list_tools()

    with pytest.raises(BaseException, match="error"):  # the SDK reports the refusal as an MCPError (-32603)
        anyio.run(attempt)
    assert seen and all(status == 401 and (challenge or "").startswith("Bearer") for status, challenge in seen), seen


@pytest.mark.parametrize("path", ["/health", "/health/ready"])
def test_health_stays_open(token_gateway: Proc, path: str) -> None:
    assert _raw(token_gateway.extra["url"] + path)[0] == 200


# -- OAuth resource server ---------------------------------------------------------------------


class Issuer:
    """A test authorization server: an RSA key that signs access tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, audience: str, *, key: Any = None, algorithm: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": audience, "sub": "agent-7", "client_id": "agent", "iat": now, "exp": now + 300}
        body["scope"] = f"{SCOPE} other"
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(body, key or self.key, algorithm=algorithm)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def oauth_gateway(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("oauth")
    (tmp / "issuer.pem").write_bytes(issuer.public_pem())
    gateway = gateway_proc(
        tmp,
        GATEWAY_OAUTH_ISSUER_URL=ISSUER,
        GATEWAY_OAUTH_PUBLIC_KEY_FILE=str(tmp / "issuer.pem"),
        GATEWAY_OAUTH_REQUIRED_SCOPES=SCOPE,
    )
    gateway.extra["resource"] = gateway.extra["url"] + "/mcp"
    gateway.env["GATEWAY_OAUTH_RESOURCE_URL"] = gateway.extra["resource"]
    with running(gateway):
        yield gateway


def test_protected_resource_metadata(oauth_gateway: Proc) -> None:
    status, document = _raw(oauth_gateway.extra["url"] + "/.well-known/oauth-protected-resource/mcp")
    assert status == 200
    assert document["resource"] == oauth_gateway.extra["resource"]
    assert document["authorization_servers"] == [ISSUER]
    assert document["scopes_supported"] == [SCOPE]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_official_client_with_a_signed_token(oauth_gateway: Proc, issuer: Issuer, mode: str) -> None:
    token = issuer.token(oauth_gateway.extra["resource"])
    names, result = anyio.run(
        _mcp_round_trip, oauth_gateway.extra["resource"], {"authorization": f"Bearer {token}"}, mode
    )
    assert "hash_content" in names and not result.is_error
    status, _ = _raw(oauth_gateway.extra["url"] + "/tools/list", headers={"authorization": f"Bearer {token}"})
    assert status == 200


def _bad_tokens(issuer: Issuer, audience: str) -> dict[str, str]:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "expired": issuer.token(audience, exp=int(time.time()) - 3600),
        "wrong issuer": issuer.token(audience, iss="https://evil.example"),
        "wrong audience": issuer.token("https://other.example/mcp"),
        "no audience": issuer.token(audience, aud=None),
        "no expiry": issuer.token(audience, exp=None),
        "signed by another key": issuer.token(audience, key=stranger),
        "ES256 with the wrong key type": issuer.token(
            audience, key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"
        ),
        "alg none": jwt.encode({"iss": ISSUER, "aud": audience, "exp": int(time.time()) + 60}, "", algorithm="none"),
        "not a jwt": "garbage.garbage.garbage",
    }


def test_bad_tokens_get_401_with_the_metadata_link(oauth_gateway: Proc, issuer: Issuer) -> None:
    import urllib.error
    import urllib.request

    url = oauth_gateway.extra["url"]
    for name, token in [("none", None), *_bad_tokens(issuer, oauth_gateway.extra["resource"]).items()]:
        for path, body in [("/mcp", MCP_INIT), ("/tools/execute/echo", {"message": "x"}), ("/metrics", None)]:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(
                url + path, data=data, headers={"content-type": "application/json", **MCP_HEADERS}
            )
            if token is not None:
                request.add_header("authorization", f"Bearer {token}")
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=5)
            caught.value.close()
            assert caught.value.code == 401, (name, path)
            challenge = caught.value.headers["www-authenticate"]
            assert 'error="invalid_token"' in challenge
            assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"' in challenge, challenge


def test_missing_scope_is_403(oauth_gateway: Proc, issuer: Issuer) -> None:
    token = issuer.token(oauth_gateway.extra["resource"], scope="read-only")
    status, body = _raw(oauth_gateway.extra["url"] + "/mcp", "POST", MCP_INIT, {"authorization": f"Bearer {token}"})
    assert status == 403 and body["error"] == "insufficient_scope"


def test_health_stays_open_under_oauth(oauth_gateway: Proc) -> None:
    assert _raw(oauth_gateway.extra["url"] + "/health")[0] == 200


def test_jwks_file_selects_the_key_by_kid(tmp_path: Path, issuer: Issuer) -> None:
    """The JWKS variant of the verifier, on its own: two keys, tokens pick theirs by ``kid``."""
    second = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key())), "kid": "rsa-1", "use": "sig"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(second.public_key())), "kid": "ec-1", "use": "sig"},
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    audience = "https://gw.example/mcp"
    settings = GatewaySettings(
        bridge_enabled=False,
        oauth_issuer_url=ISSUER,
        oauth_resource_url=audience,
        oauth_jwks_file=tmp_path / "jwks.json",
    )
    verifier = JwtVerifier(settings)

    def verify(token: str) -> Any:
        return anyio.run(verifier.verify_token, token)

    rsa_token = jwt.encode(
        {"iss": ISSUER, "aud": audience, "exp": int(time.time()) + 60, "scope": "a b"},
        issuer.key,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    ec_token = jwt.encode(
        {"iss": ISSUER, "aud": audience, "exp": int(time.time()) + 60, "scp": ["c"]},
        second,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    assert verify(rsa_token).scopes == ["a", "b"]
    assert verify(ec_token).scopes == ["c"]
    swapped = jwt.encode(
        {"iss": ISSUER, "aud": audience, "exp": int(time.time()) + 60}, second, "ES256", {"kid": "rsa-1"}
    )
    unknown = jwt.encode({"iss": ISSUER, "aud": audience, "exp": int(time.time()) + 60}, second, "ES256", {"kid": "x"})
    assert verify(swapped) is None and verify(unknown) is None


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GATEWAY_OAUTH_ISSUER_URL": ISSUER}, "GATEWAY_OAUTH_RESOURCE_URL"),
        ({"GATEWAY_OAUTH_ISSUER_URL": "ftp://x", "GATEWAY_OAUTH_RESOURCE_URL": "http://a/mcp"}, "ISSUER_URL"),
        ({"GATEWAY_OAUTH_ALGORITHMS": "HS256"}, "GATEWAY_OAUTH_ALGORITHMS"),
        ({"GATEWAY_OAUTH_PUBLIC_KEY_FILE": "/no/such/file.pem"}, "GATEWAY_OAUTH_PUBLIC_KEY_FILE"),
    ],
)
def test_incomplete_oauth_settings_stop_the_gateway(env: dict[str, str], fragment: str) -> None:
    import subprocess
    import sys

    from tests.procs import ROOT, base_env

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--no-bridge"], env=base_env(**env), cwd=ROOT, capture_output=True, timeout=60
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines
