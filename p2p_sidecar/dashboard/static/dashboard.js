// mcp-p2p node dashboard: renders the snapshot of /api/dashboard, live over server-sent events.
// Plain DOM and SVG: every value from the node (peer ids, errors, names) is set as text, never as markup.
"use strict";

(function () {
  const INTERVAL = Number(document.body.dataset.intervalMs) || 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const STATUSES = ["queued", "running", "completed", "failed", "cancelled"];
  let self = null;
  let lastAt = 0;
  let pollTimer = null;

  // -- small builders ----------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) append(node, child);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    for (const child of children) append(node, child);
    return node;
  }
  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
    }
  }
  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  function fill(node, children) {
    node.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
  }
  function byId(id) { return document.getElementById(id); }

  // -- formatting ---------------------------------------------------------------------------------
  function shortPeer(peerId) {
    if (!peerId) return "—";
    if (self && peerId === self) return "this node";
    return "…" + peerId.slice(-8);
  }
  function peerCell(peerId) {
    return el("td", { class: "mono", title: peerId || "" }, shortPeer(peerId));
  }
  function shortId(id) { return id && id.length > 12 ? id.slice(0, 12) + "…" : id || "—"; }
  function ago(epoch, now) {
    if (!epoch) return "—";
    return duration(Math.max(0, now - epoch)) + " ago";
  }
  function duration(seconds) {
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 90) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }
  function badge(text, kind) { return el("span", { class: "badge " + (kind || text) }, text); }
  function progressCell(progress) {
    if (!progress) return el("td", {}, "—");
    const cell = el("td", {});
    if (progress.total) {
      cell.append(el("progress", { max: progress.total, value: progress.done || 0 }), " ");
    }
    if (progress.message) cell.append(progress.message);
    return cell;
  }
  function emptyRow(columns, text) {
    return el("tr", {}, el("td", { colspan: columns, class: "empty" }, text));
  }

  // -- sections -----------------------------------------------------------------------------------
  function renderNode(node) {
    self = node.peer_id;
    byId("title-peer").textContent = shortPeer(node.peer_id) === "this node" ? "…" + node.peer_id.slice(-8) : "";
    document.title = "mcp-p2p node …" + node.peer_id.slice(-8);
    const gateway = node.gateway;
    const facts = [
      ["peer id", el("span", { class: "mono", id: "node-peer-id" }, node.peer_id)],
      ["addresses", node.addresses.length
        ? el("ul", {}, ...node.addresses.map((addr) => el("li", { class: "mono" }, addr)))
        : "none yet"],
      ["version", node.version],
      ["uptime", duration(node.uptime_s)],
      ["state", badge(node.ready ? "ready" : "starting", node.ready ? "yes" : "pending")],
      ["bridge", el("span", {}, el("span", { class: "mono" }, node.bridge.endpoint),
        ` · ${node.bridge.in_flight} in flight · ${node.bridge.handled_calls} calls served`)],
      ["gateway", gateway.connected
        ? el("span", { id: "gateway-state" }, badge("connected", "yes"),
          ` pid ${gateway.pid ?? "?"} · v${gateway.version ?? "?"} · ${gateway.local_tools} local tools · heard ${duration(gateway.last_seen_s)} ago`)
        : el("span", { id: "gateway-state" }, badge("none", "no"), " no gateway connected")],
      ["network", node.membership.closed
        ? "closed (members only" + (node.membership.network_secret ? ", network secret)" : ")")
        : "open (every peer is a member)"],
      ["P2P tools", String(node.tools)],
    ];
    fill(byId("node-facts"), facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  }

  function renderPeers(peers) {
    byId("peer-count").textContent = `(${peers.filter((p) => p.state === "connected").length} connected of ${peers.length})`;
    const rows = peers.map((peer) => el("tr", { "data-peer": peer.peer_id },
      peerCell(peer.peer_id),
      el("td", {}, badge(peer.state)),
      el("td", {}, peer.latency_ms === null ? "—" : peer.latency_ms.toFixed(1) + " ms"),
      el("td", {}, badge(peer.member ? "yes" : "no")),
      el("td", {}, `${peer.completed_tasks} done` + (peer.running_tasks ? ` · ${peer.running_tasks} running` : "")),
      el("td", { class: "wrap small" },
        peer.task_types.length ? "tasks: " + peer.task_types.join(", ") : "",
        peer.tools.length ? (peer.task_types.length ? " · " : "") + "tools: " + peer.tools.join(", ") : "",
        !peer.tools.length && !peer.task_types.length ? "—" : ""),
    ));
    fill(byId("peer-table").tBodies[0], rows.length ? rows : [emptyRow(6, "no peers known yet")]);
  }

  function renderNetwork(node, peers) {
    const map = byId("network-map");
    const shown = peers.slice(0, 40);
    const cx = 200, cy = 150;
    const radius = shown.length <= 1 ? 95 : 115;
    const parts = [];
    const positions = shown.map((peer, index) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * index) / Math.max(1, shown.length);
      return [cx + radius * Math.cos(angle), cy + radius * Math.sin(angle)];
    });
    shown.forEach((peer, index) => {
      const [x, y] = positions[index];
      parts.push(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: "link " + peer.state }));
      if (peer.latency_ms !== null && peer.state === "connected") {
        parts.push(svg("text", { x: (cx + x) / 2 + 4, y: (cy + y) / 2 - 4, class: "latency" },
          peer.latency_ms.toFixed(1) + " ms"));
      }
    });
    shown.forEach((peer, index) => {
      const [x, y] = positions[index];
      const classes = ["peer", peer.state, peer.member ? "member" : ""].join(" ");
      parts.push(svg("g", { "data-peer": peer.peer_id },
        svg("title", {}, `${peer.peer_id} (${peer.state})`),
        svg("circle", { cx: x, cy: y, r: 11, class: classes }),
        svg("text", { x: x, y: y + (y >= cy ? 26 : -16), "text-anchor": "middle" }, shortPeer(peer.peer_id))));
    });
    parts.push(svg("g", {},
      svg("title", {}, node.peer_id + " (this node)"),
      svg("circle", { cx, cy, r: 16, class: "self" }),
      svg("text", { x: cx, y: cy + 32, "text-anchor": "middle" }, "this node")));
    if (peers.length > shown.length) {
      parts.push(svg("text", { x: 8, y: 292 }, `+${peers.length - shown.length} more peers`));
    }
    fill(map, parts);
  }

  function renderQueue(queue, now) {
    if (!queue) return;
    const flags = [];
    if (queue.paused) flags.push(el("span", { class: "badge flag", title: queue.paused_reason || "" }, "paused"));
    if (queue.draining) flags.push(el("span", { class: "badge flag" }, "draining"));
    fill(byId("queue-flags"), flags);
    const counts = STATUSES.map((status) => el("div", { class: "count " + status, "data-status": status },
      el("b", {}, String(queue.counts[status] || 0)), el("span", {}, status)));
    counts.push(el("div", { class: "count" }, el("b", {}, `${queue.running_here}/${queue.slots}`),
      el("span", {}, `slots busy · ${queue.workers} worker${queue.workers === 1 ? "" : "s"}`)));
    fill(byId("queue-counts"), counts);
    renderChart(queue, now);

    const running = queue.running.map((task) => el("tr", { "data-task": task.task_id },
      el("td", { class: "mono", title: task.task_id }, shortId(task.task_id)),
      el("td", {}, task.task_type),
      peerCell(task.executed_by),
      el("td", {}, task.started_at ? duration(Math.max(0, now - task.started_at)) : "—"),
      progressCell(task.progress)));
    fill(byId("running-table").tBodies[0], running.length ? running : [emptyRow(5, "nothing running")]);

    const foreign = queue.running_for_others.map((task) => el("tr", { "data-task": task.task_id },
      el("td", { class: "mono", title: task.task_id }, shortId(task.task_id)),
      el("td", {}, task.task_type),
      peerCell(task.owner),
      el("td", {}, duration(Math.max(0, now - task.started_at))),
      progressCell(task.progress)));
    fill(byId("foreign-table").tBodies[0], foreign.length ? foreign : [emptyRow(5, "none")]);

    const recent = queue.recent.map((task) => el("tr", { "data-task": task.task_id, "data-status": task.status },
      el("td", { class: "mono", title: task.task_id }, shortId(task.task_id)),
      el("td", {}, task.task_type),
      el("td", {}, badge(task.status)),
      peerCell(task.executed_by),
      el("td", {}, ago(task.finished_at || task.started_at || task.created_at, now))));
    fill(byId("recent-table").tBodies[0], recent.length ? recent : [emptyRow(5, "no tasks yet")]);

    const failures = queue.failures.map((task) => {
      const error = task.error || {};
      return el("li", { "data-task": task.task_id },
        el("div", {}, el("span", { class: "mono", title: task.task_id }, shortId(task.task_id)), " ",
          el("b", {}, task.task_type), " on ", el("span", { class: "mono" }, shortPeer(task.executed_by)),
          el("span", { class: "muted small" }, " · attempt " + task.attempt + " · " + ago(task.finished_at, now))),
        el("div", { class: "msg small" }, (error.code ? error.code + ": " : "") + (error.message || "failed")));
    });
    fill(byId("failures"), failures.length ? failures : [el("li", { class: "empty" }, "no failures")]);
  }

  function renderChart(queue, now) {
    const chart = byId("completions-chart");
    const bin = 5;
    const bins = Math.floor(queue.window_s / bin);
    const end = Math.floor(now);
    const values = new Array(bins).fill(0);
    for (const [second, count] of queue.completions) {
      const index = bins - 1 - Math.floor((end - second) / bin);
      if (index >= 0 && index < bins) values[index] += count;
    }
    const rates = values.map((value) => value / bin);
    const top = Math.max(1, ...rates);
    const width = 600 / bins;
    const parts = [0.5, 1].map((fraction) =>
      svg("line", { x1: 0, x2: 600, y1: 120 - 110 * fraction, y2: 120 - 110 * fraction, class: "grid-line" }));
    rates.forEach((rate, index) => {
      if (rate <= 0) return;
      const height = (110 * rate) / top;
      parts.push(svg("rect", { x: index * width + 0.5, y: 120 - height, width: Math.max(1, width - 1), height,
        class: "bar" }, svg("title", {}, `${rate.toFixed(2)}/s`)));
    });
    fill(chart, parts);
    byId("chart-caption").textContent =
      `completed per second, last ${Math.round(queue.window_s / 60)} min in ${bin} s bins · top of scale ` +
      `${top.toFixed(top < 10 ? 1 : 0)}/s · last minute ${queue.per_s_60s}/s · ${queue.completed_here} run here in all`;
  }

  function renderWorkflows(workflows) {
    const list = byId("workflow-list");
    byId("workflow-counts").textContent = workflows.length ? `(latest ${workflows.length})` : "";
    if (!workflows.length) {
      fill(list, [el("p", { class: "empty" }, "no workflows yet")]);
      return;
    }
    fill(list, workflows.map((workflow) => el("article", { class: "workflow", "data-workflow": workflow.workflow_id },
      el("header", {}, el("b", {}, workflow.name), badge(workflow.status),
        el("span", { class: "muted small" },
          `${workflow.steps_done}/${workflow.steps_total} steps done · `,
          el("span", { class: "mono", title: workflow.workflow_id }, shortId(workflow.workflow_id)))),
      workflow.error ? el("p", { class: "small msg" }, workflow.error) : null,
      el("div", { class: "dag-wrap" }, drawDag(workflow)),
      workflow.steps_hidden ? el("p", { class: "small muted" }, `${workflow.steps_hidden} more steps not drawn`) : null)));
  }

  function drawDag(workflow) {
    const columnWidth = 150, rowHeight = 46, boxWidth = 124, boxHeight = 34, pad = 10;
    const where = {};
    let rows = 0;
    workflow.levels.forEach((level, column) => {
      level.forEach((stepId, row) => { where[stepId] = [pad + column * columnWidth, pad + row * rowHeight]; });
      rows = Math.max(rows, level.length);
    });
    const width = pad * 2 + Math.max(1, workflow.levels.length) * columnWidth - (columnWidth - boxWidth);
    const height = pad * 2 + Math.max(1, rows) * rowHeight - (rowHeight - boxHeight);
    const edges = [], boxes = [];
    for (const step of workflow.steps) {
      const to = where[step.step_id];
      if (!to) continue;
      for (const dep of step.depends_on) {
        const from = where[dep];
        if (!from) continue;
        const x1 = from[0] + boxWidth, y1 = from[1] + boxHeight / 2, x2 = to[0], y2 = to[1] + boxHeight / 2;
        edges.push(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}` }));
      }
      const label = step.step_id.length > 16 ? step.step_id.slice(0, 15) + "…" : step.step_id;
      const detail = `${step.task_type}` + (step.executed_by ? " · " + shortPeer(step.executed_by) : "");
      boxes.push(svg("g", { class: "step status-" + step.status, "data-step": step.step_id, "data-status": step.status },
        svg("title", {}, `${step.step_id}: ${step.status}` + (step.error ? ` (${step.error.message || ""})` : "")),
        svg("rect", { x: to[0], y: to[1], width: boxWidth, height: boxHeight, rx: 6 }),
        svg("text", { x: to[0] + 8, y: to[1] + 14 }, label),
        svg("text", { x: to[0] + 8, y: to[1] + 27, class: "type" }, detail.slice(0, 22))));
    }
    return svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `workflow ${workflow.name}: steps and their dependencies` }, ...edges, ...boxes);
  }

  // -- the feed -----------------------------------------------------------------------------------
  function render(snapshot) {
    if (snapshot.at < lastAt) return;
    lastAt = snapshot.at;
    renderNode(snapshot.node);
    renderPeers(snapshot.peers);
    renderNetwork(snapshot.node, snapshot.peers);
    renderQueue(snapshot.queue, snapshot.at);
    renderWorkflows(snapshot.workflows);
    byId("updated").textContent = "updated " + new Date(snapshot.at * 1000).toLocaleTimeString();
  }

  function setLive(state) {
    const live = byId("live");
    live.dataset.state = state;
    live.textContent = state;
  }

  async function poll() {
    try {
      const response = await fetch("/api/dashboard", { cache: "no-store", credentials: "same-origin" });
      if (response.status === 401) { location.reload(); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      setLive("polling");
    } catch (error) {
      setLive("offline");
    }
    pollTimer = setTimeout(poll, INTERVAL);
  }

  function connect() {
    if (!("EventSource" in window)) { poll(); return; }
    const source = new EventSource("/api/dashboard/events");
    let opened = false;
    source.addEventListener("snapshot", (event) => {
      opened = true;
      if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
      setLive("live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (!opened) {  // refused (busy, or the token): poll instead; a 401 there shows the sign-in page
        source.close();
        if (!pollTimer) poll();
      } else {
        setLive("offline");  // the browser reconnects by itself
      }
    });
  }

  connect();
})();
