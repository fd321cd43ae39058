"""The live status page (``/status``): the last hour of the server's numbers, and the page.

Sans-I/O: :class:`History` is handed a snapshot of the current numbers and a ``now`` (by a
timer of the process assembly) and keeps one sample per :data:`SAMPLE_SECONDS` for an hour;
:meth:`History.view` is what ``/status.json`` answers. The page itself (HTML, CSS and a
script that draws its plots as SVG by hand: no charting library, no CDN, nothing to vendor,
and the demo's Content-Security-Policy needs no exception) is kept here as text, so that
the wheel and the one-file binary carry it with the code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SAMPLE_SECONDS = 10.0
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The numbers at one moment: gauges as they were, byte counters as totals so far."""

    t: float
    peers: int
    calls: int
    allocations: Mapping[str, int]  # by transport: udp, tcp, tls
    bytes_in: int  # relayed towards clients and peers, totals since start
    bytes_out: int


class History:
    """The samples of the last hour (a ring); bandwidth is worked out between samples."""

    def __init__(self, every: float = SAMPLE_SECONDS, span: float = HOUR) -> None:
        self.every = every
        self.samples: deque[Sample] = deque(maxlen=max(2, int(span / every) + 1))
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Whether a sample is due at ``now`` (a timer may fire early or late)."""
        return now >= self._next

    def record(self, sample: Sample) -> None:
        """Keep ``sample``; the oldest beyond the hour is dropped."""
        self.samples.append(sample)
        self._next = sample.t + self.every

    def view(self, current: Sample) -> dict[str, Any]:
        """What the page shows: the current numbers, the rate since the last sample, and
        the series of the last hour (times in seconds before ``current.t``)."""
        points = [*self.samples]
        if not points or points[-1].t < current.t:
            points.append(current)
        series: dict[str, list[Any]] = {
            "t": [],
            "peers": [],
            "calls": [],
            "allocations": [],
            "in_bps": [],
            "out_bps": [],
        }
        previous: Sample | None = None
        for s in points:
            series["t"].append(round(s.t - current.t, 1))
            series["peers"].append(s.peers)
            series["calls"].append(s.calls)
            series["allocations"].append(sum(s.allocations.values()))
            series["in_bps"].append(_bps(previous, s, "bytes_in"))
            series["out_bps"].append(_bps(previous, s, "bytes_out"))
            previous = s
        return {
            "now": {
                "peers": current.peers,
                "calls": current.calls,
                "allocations": dict(current.allocations),
                "in_bps": series["in_bps"][-1],
                "out_bps": series["out_bps"][-1],
                "bytes_in": current.bytes_in,
                "bytes_out": current.bytes_out,
            },
            "sample_seconds": self.every,
            "series": series,
        }


def _bps(before: Sample | None, after: Sample, field: str) -> float:
    """Bits per second of counter ``field`` between two samples (0 for the first, or when a
    counter went back: a restarted worker)."""
    if before is None or after.t <= before.t:
        return 0.0
    delta: int = getattr(after, field) - getattr(before, field)
    return max(0.0, delta * 8 / (after.t - before.t))


STATUS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flaskrtc status</title>
<link rel="icon" href="favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="status/status.css">
<script src="status/status.js" defer></script>
</head>
<body>
<header><h1>flaskrtc status</h1><span id="updated">loading…</span></header>
<main>
<section class="cards">
  <div class="card"><div class="label">Peers online</div><div class="value" id="peers">&ndash;</div></div>
  <div class="card"><div class="label">Calls in progress</div><div class="value" id="calls">&ndash;</div></div>
  <div class="card"><div class="label">TURN allocations</div><div class="value" id="allocations">&ndash;</div>
    <div class="detail" id="by-transport"></div></div>
  <div class="card"><div class="label">Relayed in / out</div><div class="value" id="bandwidth">&ndash;</div>
    <div class="detail" id="totals"></div></div>
</section>
<section class="plots">
  <figure><figcaption>Peers and calls, last hour</figcaption><svg id="plot-peers" viewBox="0 0 420 170" role="img" aria-label="peers"></svg></figure>
  <figure><figcaption>TURN allocations, last hour</figcaption><svg id="plot-allocations" viewBox="0 0 420 170" role="img" aria-label="allocations"></svg></figure>
  <figure><figcaption>Relayed bandwidth (in, out), last hour</figcaption><svg id="plot-bandwidth" viewBox="0 0 420 170" role="img" aria-label="bandwidth"></svg></figure>
</section>
<p class="error" id="error" hidden></p>
</main>
</body>
</html>
"""

STATUS_CSS = """:root { --bg: #f4f6fb; --card: #fff; --text: #111827; --muted: #6b7280;
  --line: #e5e7eb; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
@media (prefers-color-scheme: dark) { :root { --bg: #0b1020; --card: #151b2e; --text: #e5e7eb;
  --muted: #9ca3af; --line: #263049; } }
body { margin: 0; background: var(--bg); color: var(--text); }
header { display: flex; align-items: baseline; gap: 1rem; padding: 1rem 1.5rem; }
header h1 { font-size: 1.25rem; margin: 0; }
#updated { color: var(--muted); font-size: .9rem; }
main { padding: 0 1.5rem 1.5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(12rem, 1fr)); gap: 1rem; }
.card, figure { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 1rem; margin: 0; }
.label, figcaption, .detail { color: var(--muted); font-size: .85rem; }
.value { font-size: 1.8rem; font-weight: 600; margin: .25rem 0; white-space: nowrap; }
#bandwidth { font-size: 1.05rem; padding-top: .45rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(20rem, 1fr)); gap: 1rem;
  margin-top: 1rem; }
svg { width: 100%; height: auto; }
svg text { fill: var(--muted); font-size: 12px; }
svg .grid { stroke: var(--line); }
.error { color: #dc2626; }
"""

# Plain JavaScript, like the demo's: fetches status.json every few seconds (with the token
# of the page's own address, if any, as a Bearer header) and draws each series as an SVG
# polyline with its axis labels.
STATUS_JS = """"use strict";
const COLORS = ["#2563eb", "#16a34a", "#d97706"];
const NS = "http://www.w3.org/2000/svg";
const token = new URLSearchParams(location.search).get("token");

function el(name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function human(n, unit) {
  const steps = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < steps.length - 1) { n /= 1000; i++; }
  const text = i || (n % 1 && n < 10) ? n.toFixed(1) : String(Math.round(n));
  return text + " " + steps[i] + unit;
}

function plot(svg, t, lines, unit) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 420, H = 170, L = 74, R = 8, T = 22, B = 22;
  const all = lines.flatMap((l) => l.values);
  const top = Math.max(1, ...all);
  const span = Math.max(60, -Math.min(0, ...t));
  const x = (s) => L + (W - L - R) * (1 + s / span);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f), class: "grid" }));
    svg.appendChild(el("text", { x: L - 4, y: y(top * f) + 4, "text-anchor": "end" }, human(top * f, unit)));
  }
  svg.appendChild(el("text", { x: L, y: H - 6 }, "-" + Math.round(span / 60) + " min"));
  svg.appendChild(el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
  lines.forEach((line, i) => {
    const points = line.values.map((v, k) => x(t[k]).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
    svg.appendChild(el("polyline", { points, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-series": line.name }));
    svg.appendChild(el("text", { x: L + 90 * i, y: 14, fill: COLORS[i % COLORS.length] }, line.name));
  });
}

function show(status) {
  const now = status.now;
  document.getElementById("peers").textContent = now.peers;
  document.getElementById("calls").textContent = now.calls;
  const by = now.allocations;
  document.getElementById("allocations").textContent = Object.values(by).reduce((a, b) => a + b, 0);
  document.getElementById("by-transport").textContent =
    Object.entries(by).map(([k, v]) => k + " " + v).join(" · ");
  document.getElementById("bandwidth").textContent =
    human(now.in_bps, "b/s") + " / " + human(now.out_bps, "b/s");
  document.getElementById("totals").textContent =
    "since start: " + human(now.bytes_in, "B") + " in, " + human(now.bytes_out, "B") + " out";
  const s = status.series;
  plot(document.getElementById("plot-peers"), s.t,
    [{ name: "peers", values: s.peers }, { name: "calls", values: s.calls }], "");
  plot(document.getElementById("plot-allocations"), s.t,
    [{ name: "allocations", values: s.allocations }], "");
  plot(document.getElementById("plot-bandwidth"), s.t,
    [{ name: "in", values: s.in_bps }, { name: "out", values: s.out_bps }], "b/s");
  document.getElementById("updated").textContent = "flaskrtc " + status.version +
    " · worker " + status.worker + " · updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = "1";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch("status.json", { headers, cache: "no-store" });
    if (!response.ok) throw new Error("status.json: HTTP " + response.status);
    show(await response.json());
    error.hidden = true;
  } catch (err) {
    error.textContent = String(err.message || err);
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, 5000);
"""
