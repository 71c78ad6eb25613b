"""deploy/grafana/mcp-p2p-dashboard.json against Grafana's dashboard JSON model and against the real metrics.

Grafana's model is read with ``grafana-foundation-sdk``, whose types are
generated from Grafana's own schemas: the dashboard is decoded into them
(panel options and field config through each panel plugin's types, queries
through the Prometheus data source's) and encoded again, and nothing may be
lost on the way, so a misspelled or misplaced key fails here.  Then every
PromQL expression may name only metrics that a real gateway and sidecar
expose on ``/metrics``, and the layout must fit Grafana's 24-column grid
without overlaps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.ci import require_module
from tests.procs import Proc, http_json

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "mcp-p2p-dashboard.json"
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "clamp_min", "by", "le"}


def model() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def lost(original: Any, round_trip: Any, path: str = "") -> list[str]:
    """Paths present in ``original`` that did not survive decoding into the typed model and back."""
    if isinstance(original, dict):
        if not isinstance(round_trip, dict):
            return [path or "/"]
        missing = []
        for key, value in original.items():
            if key not in round_trip:
                missing.append(f"{path}/{key}")
            else:
                missing.extend(lost(value, round_trip[key], f"{path}/{key}"))
        return missing
    if isinstance(original, list):
        if not isinstance(round_trip, list) or len(round_trip) != len(original):
            return [path]
        return [
            miss for index, item in enumerate(original) for miss in lost(item, round_trip[index], f"{path}/{index}")
        ]
    return [] if original == round_trip else [f"{path} ({original!r} became {round_trip!r})"]


def test_the_dashboard_survives_grafanas_typed_model_whole() -> None:
    sdk = require_module("grafana_foundation_sdk", "the dev extra's grafana-foundation-sdk is not installed")
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
    from grafana_foundation_sdk.models.prometheus import Dataquery

    assert sdk is not None
    register_default_plugins()
    original = model()
    decoded = Dashboard.from_json(original)
    round_trip = json.loads(json.dumps(decoded, cls=JSONEncoder))
    assert lost(original, round_trip) == []
    for panel in decoded.panels or []:
        if isinstance(panel, RowPanel):
            continue
        assert isinstance(panel, Panel)
        kind = panel.type_val
        assert runtime.panelcfg_config(kind) is not None, f"{panel.title}: no panel plugin {kind!r}"
        assert panel.targets, f"{panel.title} has no query"
        for query in panel.targets:
            assert isinstance(query, Dataquery), f"{panel.title}: a query that is not Prometheus's"
            assert query.expr and query.ref_id


def test_layout_ids_and_datasource() -> None:
    dashboard = model()
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{panel['title']} should say what it shows"
    [variable] = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


def metric_names(text: str) -> set[str]:
    """Every series name a scrape can hold, from its ``# TYPE`` lines (a labelled family may have no sample yet)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def queried_metrics() -> set[str]:
    found: set[str] = set()
    for panel in model()["panels"]:
        for query in panel.get("targets", []):
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\b\d[\d.]*(e-?\d+)?\b', "", query["expr"])
            found |= {name for name in re.findall(r"[a-z_][a-z0-9_]*", expr) if name not in PROMQL_FUNCTIONS}
    return found - {"runtime", "outcome", "status", "state", "direction", "op", "reason", "limit"}


@pytest.mark.e2e
def test_every_query_names_a_metric_the_processes_expose(stack: tuple[Proc, Proc]) -> None:
    gateway, sidecar = stack
    _, gateway_text = http_json("GET", gateway.extra["url"] + "/metrics")
    _, sidecar_text = http_json("GET", f"http://127.0.0.1:{sidecar.extra['admin_port']}/metrics")
    exposed = metric_names(gateway_text) | metric_names(sidecar_text)
    queried = queried_metrics()
    assert queried, "no metric found in the queries"
    assert len(queried) >= 20
    missing = sorted(name for name in queried if name not in exposed)
    assert not missing, f"queries name metrics no process exposes: {missing}"


def test_the_model_check_catches_a_misspelled_key() -> None:
    require_module("grafana_foundation_sdk", "the dev extra's grafana-foundation-sdk is not installed")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    broken = model()
    stat_panel = next(panel for panel in broken["panels"] if panel["type"] == "stat")
    stat_panel["options"]["reduceOptons"] = stat_panel["options"].pop("reduceOptions")
    stat_panel["gridPos"]["width"] = 3
    round_trip = json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder))
    missing = lost(broken, round_trip)
    assert any(path.endswith("/options/reduceOptons") for path in missing), missing
    assert any(path.endswith("/gridPos/width") for path in missing), missing
