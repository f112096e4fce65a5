"""The dashboard's HTML, CSS and script, all inline: the page must work on a closed network.

The script builds every node with ``textContent`` / ``createElementNS`` (never ``innerHTML``
with data), so item and experiment ids cannot inject markup.

The page itself holds no data and no secret, so it is served without a token; its fetches
of ``/cache`` and ``/cache/items`` carry ``Authorization: Bearer``. A browser cannot add that
header to a typed URL, so the page takes the token from the URL fragment (``/#token=...``,
which the browser never sends to the server), or from a small form shown after a 401,
keeps it in ``sessionStorage`` (this tab only) and removes it from the address bar.
"""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SmartCache</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0} #updated{color:#aab;font-size:12px}
main{padding:12px 20px} .card{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0002;padding:12px 16px;margin:0 0 14px}
.card h2{font-size:16px;margin:0 0 8px} .card h3{font-size:14px;margin:12px 0 6px}
.stats{display:flex;flex-wrap:wrap;gap:8px 22px} .stat b{display:block;font-size:18px}
.stat span{color:#667;font-size:12px} .badge{border-radius:9px;padding:1px 8px;font-size:12px;color:#fff}
.ready{background:#2a9d55} .filling{background:#d98b14} #error{display:none;background:#c0392b;color:#fff;padding:8px 20px}
.legend span{display:inline-block;margin-right:14px;font-size:12px} .legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.exps{display:flex;flex-wrap:wrap;gap:14px} .exp{border:1px solid #dde;border-radius:6px;padding:8px 10px}
.muted{color:#778;font-size:12px} .warn{color:#b35900}
#login{display:none;background:#fff;padding:10px 20px;border-bottom:1px solid #dde} #login input{width:22em}
#sweeps{padding:12px 20px 0} table{border-collapse:collapse} td,th{padding:2px 10px;text-align:left;font-size:13px}
svg text{font:11px system-ui,sans-serif}
</style></head>
<body>
<header><h1>SmartCache</h1><span id="summary"></span><span id="updated">loading…</span></header>
<div id="error"></div>
<form id="login"><label>API token <input id="token" type="password" autocomplete="off" required></label>
<button type="submit">open</button> <span class="muted">kept in this tab only (sessionStorage)</span></form>
<section id="sweeps"></section>
<main id="caches"><p class="muted">waiting for the first answer from the API…</p></main>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const COLORS = {in_pool: "#2f6fdb", leaving: "#e8891c", waiting: "#9aa3b2", quarantined: "#c0392b", validation: "#7b4fbf"};
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function stat(label, value) {
  const s = el("div", {class: "stat"}); s.append(el("b", {}, String(value)), el("span", {}, label)); return s;
}

function poolChart(items) {
  const w = 70, h = 30, gap = 8, perRow = 15, rowH = h + 18 + gap;
  const rows = Math.max(1, Math.ceil(items.length / perRow));
  const width = Math.min(Math.max(items.length, 1), perRow) * (w + gap) + 4;
  const root = svg("svg", {class: "pool", width, height: rows * rowH + 4});
  items.forEach((it, k) => {
    const x = 2 + (k % perRow) * (w + gap), y = 2 + Math.floor(k / perRow) * rowH;
    const g = svg("g", {class: "item", "data-item": it.item_id, "data-state": it.state});
    g.append(svg("title", {}, `${it.item_id}: ${it.state.replace("_", " ")}, handed out ${it.use_count}x` + (it.error ? ` - ${it.error}` : "")));
    g.append(svg("rect", {x, y, width: w, height: h, rx: 4, fill: COLORS[it.state] || "#999"}));
    const label = it.item_id.length > 10 ? "…" + it.item_id.slice(-9) : it.item_id;
    g.append(svg("text", {x: x + w / 2, y: y + h / 2 + 4, "text-anchor": "middle", fill: "#fff"}, label));
    g.append(svg("text", {x: x + w / 2, y: y + h + 13, "text-anchor": "middle", fill: "#445"}, `used ${it.use_count}×`));
    root.append(g);
  });
  return root;
}

function lineChart(title, cls, points, yMin, yMax, color) {
  const W = 300, H = 150, L = 38, R = 8, T = 18, B = 24;
  const root = svg("svg", {class: "chart " + cls, width: W, height: H});
  root.append(svg("text", {x: L, y: 12, fill: "#223"}, title));
  const xs = points.map(p => p[0]);
  const x0 = Math.min(...xs, 0), x1 = Math.max(...xs, x0 + 1);
  const X = v => L + (v - x0) / (x1 - x0) * (W - L - R);
  const Y = v => T + (1 - (v - yMin) / ((yMax - yMin) || 1)) * (H - T - B);
  root.append(svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafbfc", stroke: "#dde"}));
  for (const v of [yMin, (yMin + yMax) / 2, yMax]) {
    root.append(svg("text", {x: L - 4, y: Y(v) + 4, "text-anchor": "end", fill: "#667"}, v.toFixed(2)));
  }
  root.append(svg("text", {x: (L + W) / 2, y: H - 6, "text-anchor": "middle", fill: "#667"}, "epoch"));
  root.append(svg("text", {x: L, y: H - 6, "text-anchor": "start", fill: "#667"}, String(x0)));
  root.append(svg("text", {x: W - R, y: H - 6, "text-anchor": "end", fill: "#667"}, String(x1)));
  if (points.length) {
    const d = points.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" ");
    root.append(svg("path", {class: "line", d, fill: "none", stroke: color, "stroke-width": 2}));
    for (const p of points) root.append(svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color}));
  } else {
    root.append(svg("text", {x: (L + W) / 2, y: (T + H - B) / 2, "text-anchor": "middle", fill: "#99a"}, "no validation yet"));
  }
  return root;
}

function experimentCard(e) {
  const box = el("div", {class: "exp", "data-experiment": e.experiment_id});
  const hist = e.sampler_history || [];
  const last = hist.length ? hist[hist.length - 1] : null;
  box.append(el("h3", {}, e.experiment_id));
  box.append(el("div", {class: "muted"}, `epoch ${e.epoch} · ratio ${e.ratio.toFixed(3)} (pos ${(100 * e.ratio / (1 + e.ratio)).toFixed(0)}%)` +
    (last ? ` · Dice ${last.mean_dice.toFixed(3)} · r_FP ${last.r_fp.toFixed(3)} · r_FN ${last.r_fn.toFixed(3)}` : "")));
  box.append(el("div", {class: "muted cycle"}, `cycle coverage ${(100 * (e.cycle_coverage || 0)).toFixed(0)}%` +
    ` · cycles done ${e.cycles_completed || 0} · repeated epochs ${e.repeated_epochs || 0}`));
  const ratios = hist.map(r => [r.epoch, r.ratio]);
  const rmax = Math.ceil(Math.max(1.5, ...ratios.map(p => p[1])) * 2.2) / 2;
  box.append(lineChart("pos/neg ratio", "ratio-chart", ratios, 0, rmax, "#2f6fdb"));
  box.append(lineChart("mean Dice", "dice-chart", hist.map(r => [r.epoch, r.mean_dice]), 0, 1, "#2a9d55"));
  return box;
}

function cacheCard(c, items) {
  const card = el("section", {class: "card cache", "data-fingerprint": c.fingerprint});
  const h = el("h2", {}, `cache ${c.fingerprint} `);
  h.append(el("span", {class: "badge " + c.state}, c.state));
  card.append(h);
  const stats = el("div", {class: "stats"});
  stats.append(stat("pool items", `${c.items_cached} / ${c.capacity}`), stat("train items", c.train_items),
    stat("bytes / budget", `${bytes(c.bytes_cached)} / ${bytes(c.byte_budget)}`), stat("generation", c.generation),
    stat("rotations", c.rotations), stat("replacements pending / ready", `${c.replacements_pending} / ${c.replacements_ready}`),
    stat("validation cached", `${c.val_items_cached} / ${c.val_items_total}`), stat("quarantined", c.quarantined.length),
    stat("prep s spent / saved", `${c.prep_seconds_spent.toFixed(1)} / ${c.seconds_saved.toFixed(1)}`));
  card.append(stats);
  if (c.budget_message) card.append(el("p", {class: "warn"}, c.budget_message));
  if (c.failure) card.append(el("p", {class: "warn"}, `nothing can be served: every training item failed; ${c.failure}`));
  if (c.disk_tier_error) card.append(el("p", {class: "warn"}, `disk tier ${c.disk_tier}: ${c.disk_tier_error}`));
  card.append(el("h3", {}, `Pool (oldest first; R = ${c.replace_num} leave at the next rotation) and other items`));
  const legend = el("div", {class: "legend"});
  for (const [k, v] of Object.entries(COLORS)) { const s = el("span", {}, k.replace("_", " ")); s.prepend(el("i", {style: "background:" + v})); legend.append(s); }
  card.append(legend);
  const list = items ? items.items : c.pool.map(i => ({item_id: i, state: "in_pool", use_count: c.use_counts[i] || 0}));
  card.append(poolChart(list));
  if (items && items.waiting_unlisted) card.append(el("div", {class: "muted"}, `+ ${items.waiting_unlisted} waiting items not yet handed out`));
  for (const q of c.quarantined) card.append(el("div", {class: "warn"}, `quarantined ${q.item_id}: ${q.error}`));
  for (const d of c.detached || []) card.append(el("div", {class: "warn"}, `detached ${d.experiment_id}: ${d.reason}`));
  card.append(el("h3", {}, `Experiments (${c.experiments.length})`));
  const exps = el("div", {class: "exps"});
  c.experiments.forEach(e => exps.append(experimentCard(e)));
  if (!c.experiments.length) exps.append(el("span", {class: "muted"}, "none attached"));
  card.append(exps);
  return card;
}

const TOKEN_KEY = "smartcache-token";
function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search);  // the token leaves the address bar
}
function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? {Authorization: "Bearer " + t} : {};
}
function askForToken(wrong) {
  const form = document.getElementById("login");
  form.style.display = "block";
  form.querySelector("span").textContent = wrong ? "that token was refused; kept in this tab only" : "kept in this tab only (sessionStorage)";
}
document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("login").style.display = "none";
  refresh();
});

class Unauthorized extends Error {}
function sweepCard(s) {
  const card = el("section", {class: "card sweep", "data-sweep": s.sweep});
  card.append(el("h2", {}, `sweep ${s.sweep}: ${s.trials.length} trial(s) on ${s.caches.length} cache(s)` +
    (s.best_dice === null ? "" : ` · best Dice ${s.best_dice.toFixed(3)} (${s.best_trial})`)));
  const table = el("table");
  const head = el("tr");
  ["trial", "cache", "state", "epoch", "best Dice", "last Dice", "values"].forEach(h => head.append(el("th", {}, h)));
  table.append(head);
  const num = x => x === null ? "-" : x.toFixed(3);
  s.trials.forEach(t => {
    const row = el("tr", {"data-trial": t.trial});
    [t.trial, t.fingerprint.slice(0, 12), t.state, String(t.epoch), num(t.best_dice), num(t.last_dice),
     Object.entries(t.values).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")].forEach(v => row.append(el("td", {}, v)));
    table.append(row);
  });
  card.append(table);
  return card;
}

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store", credentials: "same-origin", headers: authHeaders()});
  if (r.status === 401) throw new Unauthorized(`${path}: HTTP 401 (the API wants a token)`);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${(await r.text()).slice(0, 200)}`);
  return r.json();
}

async function refresh() {
  const err = document.getElementById("error");
  try {
    const [caches, items, sweeps] = await Promise.all([getJSON("cache"), getJSON("cache/items"), getJSON("sweeps")]);
    document.getElementById("sweeps").replaceChildren(...sweeps.map(sweepCard));
    const byFp = Object.fromEntries(items.map(i => [i.fingerprint, i]));
    const main = document.getElementById("caches");
    main.replaceChildren(...caches.map(c => cacheCard(c, byFp[c.fingerprint])));
    if (!caches.length) main.append(el("p", {class: "muted"}, "no cache is running in this namespace"));
    const exps = caches.reduce((n, c) => n + c.experiments.length, 0);
    document.getElementById("summary").textContent = `${caches.length} cache(s), ${exps} experiment(s)`;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    err.style.display = "none";
  } catch (e) {
    if (e instanceof Unauthorized) askForToken(sessionStorage.getItem(TOKEN_KEY) !== null);
    err.textContent = String(e.message || e); err.style.display = "block";
  }
}
takeTokenFromFragment();
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body></html>
"""


def render_page(refresh_s: float) -> str:
    """The page with its polling period filled in (milliseconds, at least 250)."""
    return PAGE.replace("__REFRESH_MS__", str(max(250, int(refresh_s * 1000))))
