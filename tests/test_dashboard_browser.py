"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against real processes.

Two nodes, A with a gateway.  The page on A's admin port must show B as a
peer; a task submitted through A's gateway must appear and turn completed,
and a workflow's steps must change colour as they finish, all without a
reload; the page must fit a phone's width; a screenshot is saved in the
test's output folder.  With ``SIDECAR_ADMIN_TOKEN`` set, the page asks for
the token and the API refuses requests without it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ci import require_module
from tests.procs import Peer, http_json, p2p_network, running_network
from tests.queue_client import call

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "dashboard-test-token-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = require_module("playwright.sync_api", "the dev extra's playwright is not installed")
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make test installs it)"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Peer]]:
    peers = p2p_network(
        tmp_path_factory.mktemp("dashboard"),
        ["a", "b"],
        bootstrap={"b": ["a"]},
        gateways=("a",),
        env={"a": {"SIDECAR_WORKER_CONCURRENCY": "2", "SIDECAR_DASHBOARD_INTERVAL": "0.5"}},
    )
    with running_network(peers):
        peers["a"].wait_connected([peers["b"]])
        yield peers


def test_the_page_follows_the_node_live(net: dict[str, Peer], browser: Any, tmp_path: Path) -> None:
    a, b = net["a"], net["b"]
    assert a.gateway is not None
    url = a.gateway.extra["url"]
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    external: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(a.admin) else external.append(request.url))
    page.goto(a.admin + "/")
    page.wait_for_selector('#live[data-state="live"]', timeout=15_000)
    page.evaluate("window.__notReloaded = true")

    # this node and its peer
    assert page.inner_text("#node-peer-id") == a.peer_id
    row = page.locator(f'#peer-table tr[data-peer="{b.peer_id}"]')
    row.wait_for(timeout=15_000)
    assert "connected" in row.inner_text()
    assert page.locator(f'#network-map g[data-peer="{b.peer_id}"]').count() == 1
    assert "connected" in page.inner_text("#gateway-state")

    # a task submitted through the gateway appears, then turns completed
    task = call(url, "task_submit", task_type="sleep", payload={"seconds": 1.5})
    task_row = page.locator(f'#recent-table tr[data-task="{task["task_id"]}"]')
    task_row.wait_for(timeout=10_000)
    page.wait_for_selector(f'#recent-table tr[data-task="{task["task_id"]}"][data-status="completed"]', timeout=20_000)
    assert "completed" in task_row.inner_text()

    # a workflow's steps change colour as they finish
    steps = [
        {"step_id": "fetch", "task_type": "sleep", "payload": {"seconds": 1.2}},
        {"step_id": "parse", "task_type": "sleep", "payload": {"seconds": 1.2}, "depends_on": ["fetch"]},
        {"step_id": "store", "task_type": "echo", "payload": {"ok": True}, "depends_on": ["parse"]},
    ]
    workflow = call(url, "workflow_submit", name="dashboard demo", steps=steps)
    article = f'#workflow-list article[data-workflow="{workflow["workflow_id"]}"]'
    page.wait_for_selector(article, timeout=10_000)

    def fill_of(step: str) -> str:
        return page.eval_on_selector(f'{article} g[data-step="{step}"] rect', "rect => getComputedStyle(rect).fill")

    completed_fill = None
    seen: dict[str, set[str]] = {"fetch": set(), "parse": set(), "store": set()}
    page.wait_for_selector(f'{article} g[data-step="fetch"][data-status="completed"]', timeout=20_000)
    completed_fill = fill_of("fetch")
    seen["parse"].add(fill_of("parse"))
    seen["store"].add(fill_of("store"))
    assert completed_fill not in seen["store"], "a later step was drawn completed before it ran"
    page.wait_for_selector(f'{article} g[data-step="store"][data-status="completed"]', timeout=20_000)
    assert fill_of("store") == fill_of("parse") == completed_fill
    assert "3/3 steps done" in page.inner_text(article)

    # the whole time on one page load, with nothing fetched from elsewhere and no script error
    assert page.evaluate("window.__notReloaded === true")
    assert not external, external
    assert not errors, errors
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # readable on a phone: nothing wider than the screen
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    phone.goto(a.admin + "/")
    phone.wait_for_selector(f'#peer-table tr[data-peer="{b.peer_id}"]', timeout=15_000)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    phone.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
    phone.close()
    page.close()


def test_the_api_and_stream_answer_what_the_page_reads(net: dict[str, Peer]) -> None:
    a, b = net["a"], net["b"]
    status, body = http_json("GET", a.admin + "/api/dashboard")
    assert status == 200 and body["node"]["peer_id"] == a.peer_id
    assert b.peer_id in {peer["peer_id"] for peer in body["peers"]}
    assert set(body["queue"]["counts"]) >= {"queued", "running", "completed", "failed", "cancelled"}
    import urllib.request

    with urllib.request.urlopen(a.admin + "/api/dashboard/events", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [stream.readline() for _ in range(4)]
    assert any(line.startswith(b"event: snapshot") for line in lines), lines


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peers = p2p_network(tmp_path_factory.mktemp("guarded"), ["g"], SIDECAR_ADMIN_TOKEN=TOKEN)
    with running_network(peers):
        yield peers["g"]


def test_with_a_token_the_page_asks_for_it_and_the_api_refuses_without(guarded: Peer, browser: Any) -> None:
    admin = guarded.admin
    assert http_json("GET", admin + "/health")[0] == 200  # probes need no token
    for path in ("/api/dashboard", "/api/dashboard/events", "/metrics"):
        status, body = http_json("GET", admin + path)
        assert status == 401, (path, body)
        assert http_json("GET", admin + path, headers={"authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    status, body = http_json("GET", admin + "/api/dashboard", headers={"authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["node"]["peer_id"] == guarded.peer_id
    assert http_json("GET", admin + "/metrics", headers={"authorization": f"Bearer {TOKEN}"})[0] == 200

    page = browser.new_page()
    page.goto(admin + "/")
    page.fill("#token", "not-the-token-at-all")
    page.click("button[type=submit]")
    assert "not this node's" in page.inner_text(".error")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector('#live[data-state="live"]', timeout=15_000)
    assert page.inner_text("#node-peer-id") == guarded.peer_id
    page.close()
