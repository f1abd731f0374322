"""The graph page of ``python -m engineroom inspect MODEL --html OUT.html``: one self-contained file
(inline SVG, CSS and JS; nothing fetched) drawing the planned graph with each node coloured by the
provider that runs it, the copies the session inserted between devices marked, and a legend.

The nodes and their providers come from ``get_provider_graph_assignment_info()`` (the graph as planned,
after optimization). The copies come from the session's plan, whose copy steps carry ``route`` (source
and target provider) and a label naming the value; which reader takes which copy follows the plan's own
rule: a node reads each input on its provider's device, except inputs its kernel declares host-resident.
The layout is a layered drawing: longest-path layers, long edges broken by bend points, a few
barycenter sweeps to cut crossings.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

from engineroom.plan import COPY

_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
            "#86bcb6", "#8cd17d", "#d4a6c8", "#bab0ac"]
_FIXED = {"CPUExecutionProvider": "#4e79a7", "OpenCLExecutionProvider": "#f28e2b",
          "OpenVINOExecutionProvider": "#b07aa1", "CUDAExecutionProvider": "#59a14f"}
_COPY = "#d62728"   # reserved for copies: no provider gets red
_IO = "#e8e8e8"

_LAYER_H = 72
_NODE_H = 30
_GAP = 18
_BEND_W = 14


@dataclass(frozen=True)
class Copy:
    """One copy step of the session's plan: ``value`` moved from one provider's device to another's."""

    value: str
    src_ep: str
    dst_ep: str
    src_device: str
    dst_device: str


def planned_copies(sess) -> list[Copy]:
    """The copies the session's plan inserted between devices in the main graph, in execution order."""
    plan = sess._plan   # the plan is the only record of copies; no onnxruntime API reports them
    out = []
    for st in plan.steps:
        if st.kind != COPY:
            continue
        m = re.match(r"copy of (?:output )?'(.*)' from ", st.label)
        src, dst = st.route
        out.append(Copy(m.group(1) if m else st.label, src.name, dst.name, str(src.device), str(dst.device)))
    return out


def provider_colours(names: list[str]) -> dict[str, str]:
    """One distinct colour per provider name: built-ins keep theirs, others take the palette in order."""
    taken = {_FIXED[n] for n in names if n in _FIXED}
    free = [c for c in _PALETTE if c not in taken]
    out = {}
    for n in names:
        out[n] = _FIXED[n] if n in _FIXED else (free.pop(0) if free else "#cccccc")
    return out


# -- the graph as planned ----------------------------------------------------------------------------
class _Graph:
    """Nodes (ops, copies, graph inputs and outputs) and edges of the planned main graph."""

    def __init__(self, sess):
        from engineroom.plugin_sdk import CPU

        self.nodes: list[dict] = []
        self.edges: list[tuple[int, int, str]] = []
        parts = sess.get_provider_graph_assignment_info()
        providers = getattr(sess, "_providers", [])
        home: dict[str, tuple[int, str]] = {}   # value -> (node id, device it is produced on)
        cpu = str(CPU)
        for a in sess.get_inputs():
            home[a.name] = (self._add(kind="input", label=a.name, name=a.name, ep="",
                                      detail=[f"graph input: {a.type} {a.shape}"]), cpu)
        copies: dict[tuple[str, str], int] = {}
        self.copies = planned_copies(sess)
        for c in self.copies:
            copies[(c.value, c.dst_device)] = self._add(
                kind="copy", label="copy", name=c.value, ep="",
                detail=[f"copy of '{c.value}'", f"from {c.src_device} ({c.src_ep})",
                        f"to {c.dst_device} ({c.dst_ep})"])
        wired: set[int] = set()

        def read(value: str, device: str, reader: int) -> None:
            if not value or value not in home:
                return  # an initializer or constant: not drawn
            src, src_dev = home[value]
            if src_dev != device and (value, device) in copies:
                cid = copies[(value, device)]
                if cid not in wired:
                    wired.add(cid)
                    self.edges.append((src, cid, value))
                src = cid
            self.edges.append((src, reader, value))

        for k, part in enumerate(parts):
            prov = providers[part.provider_index] if part.provider_index < len(providers) else None
            dev = str(prov.device) if prov is not None else cpu
            for v in part.nodes:
                nid = self._add(kind="op", label=v.op_type, name=v.name, ep=part.ep_name,
                                detail=self._describe(v, part, k, dev))
                host = set() if part.compiled or prov is None else set(prov.host_input_indices(v))
                for j, nm in enumerate(v.input_names):
                    read(nm, cpu if j in host else dev, nid)
                for nm in v.output_names:
                    if nm:
                        home[nm] = (nid, dev)
        for a in sess.get_outputs():
            nid = self._add(kind="output", label=a.name, name=a.name, ep="",
                            detail=[f"graph output: {a.type} {a.shape}"])
            read(a.name, cpu, nid)
        # within a compiled group, a value read twice is one edge per reader, never a duplicate
        self.edges = list(dict.fromkeys(self.edges))

    def _add(self, **kw) -> int:
        kw["id"] = len(self.nodes)
        self.nodes.append(kw)
        return kw["id"]

    @staticmethod
    def _describe(v, part, k: int, dev: str) -> list[str]:
        dom = v.domain or "ai.onnx"
        lines = [f"{dom}::{v.op_type} (opset {v.opset})", f"on {part.ep_name} ({dev}), partition {k}"
                 + (" (compiled group)" if part.compiled else "")]
        for what, names, dts, shapes in (("in", v.input_names, v.input_dtypes, v.input_shapes),
                                         ("out", v.output_names, v.output_dtypes, v.output_shapes)):
            for j, nm in enumerate(names):
                if not nm:
                    continue
                dt = dts[j] if j < len(dts) and dts[j] is not None else "?"
                sh = list(shapes[j]) if j < len(shapes) and shapes[j] is not None else "?"
                lines.append(f"{what} {nm}: {dt} {sh}")
        return lines


# -- layout ------------------------------------------------------------------------------------------
def _width(node: dict) -> float:
    return min(max(7.2 * len(_clip(node["label"])) + 22, 64 if node["kind"] != "copy" else 56), 220)


def _clip(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _layout(g: _Graph) -> tuple[dict[int, tuple[float, float]], list[list[tuple[float, float]]], float, float]:
    """Node centres, one polyline per edge (through bend points on the layers it crosses), width, height."""
    n = len(g.nodes)
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for s, t, _ in g.edges:
        succ[s].append(t)
        indeg[t] += 1
    layer = [0] * n
    order = [i for i in range(n) if indeg[i] == 0]
    for i in order:   # Kahn: the plan is acyclic, so every node is reached
        for t in succ[i]:
            layer[t] = max(layer[t], layer[i] + 1)
            indeg[t] -= 1
            if indeg[t] == 0:
                order.append(t)
    # graph inputs sit just above their first reader, not all on the top row
    for nd in g.nodes:
        if nd["kind"] == "input" and succ[nd["id"]]:
            layer[nd["id"]] = max(0, min(layer[t] for t in succ[nd["id"]]) - 1)
    # bend points: an edge over several layers passes through one point per layer between
    items: list[dict] = [{"w": _width(nd), "node": nd["id"]} for nd in g.nodes]
    item_layer = list(layer)
    chains: list[list[int]] = []
    adj_down: dict[int, list[int]] = {}
    adj_up: dict[int, list[int]] = {}
    for s, t, _ in g.edges:
        chain = [s]
        for lay in range(layer[s] + 1, layer[t]):
            items.append({"w": _BEND_W, "node": None})
            item_layer.append(lay)
            chain.append(len(items) - 1)
        chain.append(t)
        chains.append(chain)
        for a, b in zip(chain, chain[1:]):
            adj_down.setdefault(a, []).append(b)
            adj_up.setdefault(b, []).append(a)
    n_layers = max(item_layer, default=-1) + 1
    rows: list[list[int]] = [[] for _ in range(n_layers)]
    for i, lay in enumerate(item_layer):
        rows[lay].append(i)
    pos = {i: float(k) for row in rows for k, i in enumerate(row)}
    for _ in range(4):   # barycenter sweeps, down then up
        for sweep, adj in ((range(1, n_layers), adj_up), (range(n_layers - 2, -1, -1), adj_down)):
            for lay in sweep:
                row = rows[lay]
                key = {}
                for i in row:
                    nb = adj.get(i)
                    key[i] = sum(pos[j] for j in nb) / len(nb) if nb else pos[i]
                row.sort(key=lambda i: key[i])
                for k, i in enumerate(row):
                    pos[i] = float(k)
    xs: dict[int, float] = {}
    for row in rows:   # start packed from the left, then pull each item over its neighbours
        x = 0.0
        for i in row:
            xs[i] = x + items[i]["w"] / 2
            x += items[i]["w"] + _GAP
    for _ in range(3):
        for sweep, adj in ((range(1, n_layers), adj_up), (range(n_layers - 2, -1, -1), adj_down)):
            for lay in sweep:
                _place_row(rows[lay], items, xs, adj)
    left = min((xs[i] - items[i]["w"] / 2 for i in xs), default=0.0)
    for i in xs:
        xs[i] += 20 - left
    total_w = max((xs[i] + items[i]["w"] / 2 for i in xs), default=0.0) + 20
    y = {i: 30 + item_layer[i] * _LAYER_H for i in range(len(items))}
    centres = {nd["id"]: (xs[nd["id"]], y[nd["id"]]) for nd in g.nodes}
    lines = [[(xs[i], y[i]) for i in chain] for chain in chains]
    return centres, lines, total_w, 30 + n_layers * _LAYER_H


def _place_row(row: list[int], items: list[dict], xs: dict[int, float], adj: dict[int, list[int]]) -> None:
    """Put each item of a row as near as its order allows to the mean x of its neighbours in the row
    before: packed once from the left and once from the right, and the two averaged (both keep the
    order and the gaps, so their mean does too)."""
    want = [sum(xs[j] for j in adj[i]) / len(adj[i]) if adj.get(i) else xs[i] for i in row]
    half = [items[i]["w"] / 2 for i in row]
    lo = list(want)
    for k in range(1, len(row)):
        lo[k] = max(want[k], lo[k - 1] + half[k - 1] + half[k] + _GAP)
    hi = list(want)
    for k in range(len(row) - 2, -1, -1):
        hi[k] = min(want[k], hi[k + 1] - half[k + 1] - half[k] - _GAP)
    for k, i in enumerate(row):
        xs[i] = (lo[k] + hi[k]) / 2


def _path(points: list[tuple[float, float]]) -> str:
    """A smooth path from the bottom of the first box through the bend points to the top of the last."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    pts = [(x0, y0 + _NODE_H / 2), *points[1:-1], (x1, y1 - _NODE_H / 2 - 3)]
    d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
    last = len(pts) - 2
    for k, ((ax, ay), (bx, by)) in enumerate(zip(pts, pts[1:])):
        if 0 < k < last:   # between bend points: straight, so a long edge reads as one line
            d += f" L{bx:.1f},{by:.1f}"
            continue
        my = (ay + by) / 2
        d += f" C{ax:.1f},{my:.1f} {bx:.1f},{my:.1f} {bx:.1f},{by:.1f}"
    return d


def _text_colour(fill: str) -> str:
    r, g, b = (int(fill[k:k + 2], 16) for k in (1, 3, 5))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


# -- the page ----------------------------------------------------------------------------------------
def render(sess, title: str = "model") -> tuple[str, str]:
    """The page's HTML and a one-line summary of what it shows."""
    g = _Graph(sess)
    parts = sess.get_provider_graph_assignment_info()
    used = list(dict.fromkeys(p.ep_name for p in parts))
    order = [p for p in sess.get_providers() if p in used] + [p for p in used if p not in sess.get_providers()]
    colours = provider_colours(order)
    centres, lines, width, height = _layout(g)
    e = html.escape
    svg = [f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}">',
           '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#777"/></marker></defs>', '<g id="edges">']
    kinds = {nd["id"]: nd["kind"] for nd in g.nodes}
    for (s, t, value), pts in zip(g.edges, lines):
        cls = "edge copied" if kinds[s] == "copy" or kinds[t] == "copy" else "edge"
        svg.append(f'<path class="{cls}" data-from="{s}" data-to="{t}" d="{_path(pts)}" '
                   f'marker-end="url(#arrow)"><title>{e(value)}</title></path>')
    svg.append('</g><g id="nodes">')
    for nd in g.nodes:
        x, y = centres[nd["id"]]
        w = _width(nd)
        h = _NODE_H
        tip = e("\n".join([nd["name"], *nd["detail"]]))
        label = e(_clip(nd["label"]))
        if nd["kind"] == "op":
            fill = colours[nd["ep"]]
            shape = (f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h}" rx="4" '
                     f'fill="{fill}"/>')
            txt = _text_colour(fill)
        elif nd["kind"] == "copy":
            corners = [(x - w / 2, y), (x - w / 2 + 10, y - h / 2), (x + w / 2 - 10, y - h / 2),
                       (x + w / 2, y), (x + w / 2 - 10, y + h / 2), (x - w / 2 + 10, y + h / 2)]
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in corners)
            shape = f'<polygon points="{pts}" fill="#fff" stroke="{_COPY}" stroke-width="2" stroke-dasharray="4 2"/>'
            txt = _COPY
        else:
            shape = (f'<rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h}" rx="{h / 2}" '
                     f'fill="{_IO}" stroke="#888"/>')
            txt = "#111"
        svg.append(f'<g class="node {nd["kind"]}" data-id="{nd["id"]}" data-ep="{e(nd["ep"])}" '
                   f'data-name="{e(nd["name"])}" tabindex="0"><title>{tip}</title>{shape}'
                   f'<text x="{x:.1f}" y="{y + 4:.1f}" fill="{txt}">{label}</text></g>')
    svg.append("</g></svg>")

    counts = {ep: sum(len(p.nodes) for p in parts if p.ep_name == ep) for ep in order}
    legend = []
    for ep in order:
        legend.append(f'<li class="provider" data-ep="{e(ep)}"><svg width="18" height="14">'
                      f'<rect width="18" height="14" rx="3" fill="{colours[ep]}"/></svg>'
                      f'{e(ep)} <span class="n">{counts[ep]} nodes</span></li>')
    legend.append(f'<li class="copy-key"><svg width="18" height="14"><polygon points="1,7 5,1 13,1 17,7 13,13 5,13" '
                  f'fill="#fff" stroke="{_COPY}" stroke-width="2" stroke-dasharray="3 2"/></svg>'
                  f'copy between devices <span class="n">{len(g.copies)}</span></li>')
    legend.append(f'<li class="io-key"><svg width="18" height="14"><rect width="18" height="14" rx="7" '
                  f'fill="{_IO}" stroke="#888"/></svg>graph input / output</li>')
    details = {nd["id"]: [nd["name"], *nd["detail"]] for nd in g.nodes}
    data = json.dumps({"details": details}).replace("</", "<\\/")
    summary = (f"{sum(counts.values())} nodes on {len(order)} provider(s), {len(g.copies)} copies")
    page = _PAGE.format(title=e(title), placement=e(sess.placement), legend="\n".join(legend),
                        svg="\n".join(svg), data=data, css=_CSS, js=_JS, summary=e(summary))
    return page, summary


def write_report(sess, path: str, title: str = "model") -> str:
    """Write the page to ``path``; returns the one-line summary."""
    page, summary = render(sess, title)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return summary


_CSS = """
html, body { height: 100%; }
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; display: flex; flex-direction: column; }
header { padding: 8px 14px; border-bottom: 1px solid #ddd; background: #fafafa; }
h1 { font-size: 16px; margin: 0 0 4px; }
.placement { color: #555; font-size: 12px; margin: 0 0 6px; }
ul.legend { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 14px; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
ul.legend .n { color: #777; }
.tools { margin-top: 6px; display: flex; gap: 8px; align-items: center; }
main { display: flex; flex: 1; min-height: 0; }
#canvas { flex: 1; overflow: auto; }
#side { width: 320px; border-left: 1px solid #ddd; padding: 8px 12px; font-family: ui-monospace, monospace;
        font-size: 12px; white-space: pre-wrap; overflow: auto; }
.edge { fill: none; stroke: #999; stroke-width: 1.2; }
.edge.copied { stroke: #d62728; stroke-dasharray: 4 2; }
.node { cursor: pointer; }
.node text { font: 11px ui-monospace, monospace; text-anchor: middle; pointer-events: none; }
.node.selected rect, .node.selected polygon { stroke: #000; stroke-width: 3; }
.node.match rect, .node.match polygon { stroke: #000; stroke-width: 2.5; stroke-dasharray: none; }
.edge.lit { stroke: #000; stroke-width: 2; }
"""

_JS = """
(function () {
  var data = JSON.parse(document.getElementById('graph-data').textContent);
  var svg = document.getElementById('graph');
  var side = document.getElementById('side');
  var W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height, scale = 1;
  function zoom(f) {  // resizing the drawing (not a CSS transform) keeps the scroll area right
    scale = Math.min(4, Math.max(0.05, scale * f));
    svg.setAttribute('width', Math.round(W * scale));
    svg.setAttribute('height', Math.round(H * scale));
  }
  document.getElementById('zoom-in').addEventListener('click', function () { zoom(1.25); });
  document.getElementById('zoom-out').addEventListener('click', function () { zoom(0.8); });
  document.getElementById('zoom-fit').addEventListener('click', function () {
    var c = document.getElementById('canvas');
    scale = 1; zoom(Math.min(1, c.clientWidth / W, c.clientHeight / H));
  });
  function select(g) {
    var old = svg.querySelectorAll('.selected, .lit');
    for (var i = 0; i < old.length; i++) old[i].classList.remove('selected', 'lit');
    g.classList.add('selected');
    var id = g.getAttribute('data-id');
    var edges = svg.querySelectorAll('.edge[data-from="' + id + '"], .edge[data-to="' + id + '"]');
    for (var k = 0; k < edges.length; k++) edges[k].classList.add('lit');
    side.textContent = data.details[id].join('\\n');
  }
  var nodes = svg.querySelectorAll('.node');
  for (var i = 0; i < nodes.length; i++) {
    nodes[i].addEventListener('click', function (ev) { select(ev.currentTarget); });
    nodes[i].addEventListener('keydown', function (ev) { if (ev.key === 'Enter') select(ev.currentTarget); });
  }
  document.getElementById('search').addEventListener('input', function (ev) {
    var q = ev.target.value.toLowerCase(), hits = 0;
    for (var i = 0; i < nodes.length; i++) {
      var on = q.length > 0 && (nodes[i].getAttribute('data-name').toLowerCase().indexOf(q) >= 0 ||
               nodes[i].textContent.toLowerCase().indexOf(q) >= 0);
      nodes[i].classList.toggle('match', on);
      if (on) hits++;
    }
    document.getElementById('hits').textContent = q ? hits + ' match(es)' : '';
  });
  document.documentElement.setAttribute('data-ready', '1');
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} — engineroom placement</title>
<script>
window.addEventListener('error', function (e) {{
  var el = document.documentElement;
  el.setAttribute('data-errors', (el.getAttribute('data-errors') || '') + (e.message || 'error') + ';');
}});
</script>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="placement">{placement}</p>
<ul class="legend">
{legend}
</ul>
<div class="tools"><button id="zoom-out" type="button">−</button><button id="zoom-in" type="button">+</button>
<button id="zoom-fit" type="button">fit</button>
<input id="search" type="search" placeholder="find a node by name or op"><span id="hits"></span>
<span class="n">{summary}; click a node for its details</span></div>
</header>
<main><div id="canvas">
{svg}
</div><div id="side">click a node</div></main>
<script type="application/json" id="graph-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
