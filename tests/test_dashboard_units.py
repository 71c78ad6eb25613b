"""The dashboard's pure parts: DAG levels for drawing, and the admin token's checks (as ASGI, no server)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from p2p_sidecar.dashboard.auth import COOKIE, AdminAuth, session_value
from p2p_sidecar.dashboard.snapshot import levels_of

TOKEN = "unit-test-admin-token-0123456789"


def test_levels_put_each_step_right_of_its_deepest_dependency() -> None:
    steps = [
        {"step_id": "join", "depends_on": ["left", "right"]},
        {"step_id": "root", "depends_on": []},
        {"step_id": "left", "depends_on": ["root"]},
        {"step_id": "right", "depends_on": ["left"]},
    ]
    assert levels_of(steps) == [["root"], ["left"], ["right"], ["join"]]
    assert levels_of([]) == []
    # a dependency that is not drawn (past the step limit) does not count
    assert levels_of([{"step_id": "b", "depends_on": ["hidden"]}]) == [["b"]]
    chain = [{"step_id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(2000)]
    assert len(levels_of(list(reversed(chain)))) == 2000  # no recursion limit


def app() -> Starlette:
    async def ok(_request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route(path, ok) for path in ("/", "/health", "/metrics", "/api/dashboard", "/static/x.css")]
    return Starlette(routes=routes, middleware=[Middleware(AdminAuth, token=TOKEN, login_page="LOGIN {error}")])


@pytest.mark.anyio
async def test_the_token_guards_all_but_health_and_assets() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://admin") as client:
        for path in ("/health", "/static/x.css"):
            assert (await client.get(path)).status_code == 200
        for path in ("/metrics", "/api/dashboard"):
            refused = await client.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get(path, headers={"authorization": f"Bearer {TOKEN}x"})).status_code == 401
            assert (await client.get(path, headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200
        page = await client.get("/")
        assert page.status_code == 401 and page.text.startswith("LOGIN")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        wrong = await client.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "not this node's" in wrong.text
        login = await client.post("/login", data={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert cookie.startswith(f"{COOKIE}={session_value(TOKEN)};")
        assert (await client.get("/api/dashboard")).status_code == 200  # the cookie the login set
        client.cookies.clear()
        client.cookies.set(COOKIE, session_value(TOKEN + "other"))
        assert (await client.get("/api/dashboard")).status_code == 401
        assert (await client.post("/login", content=b"token=" + b"x" * 5000)).status_code == 413
