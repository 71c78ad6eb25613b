"""The sidecar's live dashboard: a page served by the admin server, the snapshot it shows, and its token.

``snapshot.DashboardData`` reads the node, bridge, queue and workflows;
``web.dashboard_routes`` serves the page (``static/``: plain HTML, CSS, JS
and SVG shipped as package data, nothing fetched at run time), its JSON
snapshot and a server-sent event stream of it; ``auth.AdminAuth`` guards
all of it, and ``/metrics``, with ``SIDECAR_ADMIN_TOKEN`` when one is set.
"""

from p2p_sidecar.dashboard.auth import AdminAuth
from p2p_sidecar.dashboard.snapshot import DashboardData
from p2p_sidecar.dashboard.web import dashboard_routes

__all__ = ["AdminAuth", "DashboardData", "dashboard_routes"]
