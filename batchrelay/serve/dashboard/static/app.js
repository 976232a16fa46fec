// batchrelay's dashboard: plain JS, no build step, nothing loaded from elsewhere.
// Every value shown is set with textContent (or a DOM property), never parsed as HTML: batch names
// and error texts are user input. The pages poll JSON every POLL_MS; POSTs send the session's CSRF
// token in a header (the session cookie itself is HttpOnly: scripts never see it).
"use strict";

const POLL_MS = 2000;
const API = "/dashboard/api";
const SVG = "http://www.w3.org/2000/svg";
const main = document.getElementById("main");
let csrf = null;
let timer = null;
let generation = 0; // a view's polls stop once another view is shown

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "onclick" || k === "onsubmit" || k === "onchange") node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

class LoggedOut extends Error {}

async function api(path, options) {
  const opts = Object.assign({credentials: "same-origin", headers: {}}, options || {});
  if (opts.method === "POST") {
    opts.headers["X-CSRF-Token"] = csrf || "";
    opts.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(API + path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401 && path !== "/login") throw new LoggedOut();
  if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
  return body;
}

// --- formatting --------------------------------------------------------------------------------

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function usd(text) { return "$" + (text === null || text === undefined ? "0" : text); }

function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }

function badge(status) { return el("span", {className: "badge s-" + String(status).replace(/[^a-z]/g, "-")}, status); }

function progress(counts, id) {
  const total = counts.total || 0;
  const pct = total ? Math.min(100, (100 * counts.done) / total) : 0;
  const bar = el("div", {className: "bar", title: counts.done + " of " + total + " lines done"});
  const fill = el("div", {className: "fill"});
  fill.style.width = pct.toFixed(1) + "%";
  const bad = el("div", {className: "fill bad"});
  bad.style.width = (total ? (100 * (counts.failed + counts.invalid + counts.cancelled + counts.expired)) / total : 0).toFixed(1) + "%";
  bar.append(fill, bad);
  const label = el("span", {className: "bar-label"}, el("span", id ? {id: id} : {}, counts.done), " / " + total);
  return el("div", {className: "progress", dataset: {done: counts.done, total: total}}, bar, label);
}

function setLive(text) { document.getElementById("live").textContent = text; }

function flash(box, text, bad) {
  box.replaceChildren(el("p", {className: bad ? "msg error" : "msg ok", role: "status"}, text));
}

// --- views -------------------------------------------------------------------------------------

function poll(refresh) {
  const mine = ++generation;
  clearTimeout(timer);
  const tick = async () => {
    if (mine !== generation) return;
    try {
      await refresh();
      setLive("live · updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof LoggedOut) { showLogin(""); return; }
      setLive("update failed: " + e.message);
    }
    if (mine === generation) timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function showLogin(message) {
  generation++;
  clearTimeout(timer);
  csrf = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  setLive("");
  const input = el("input", {type: "password", id: "key", name: "key", autocomplete: "current-password",
                              required: true, placeholder: "client key"});
  const msg = el("div", {id: "login-message"});
  if (message) flash(msg, message, true);
  const form = el("form", {id: "login", className: "card login", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const body = await api("/login", {method: "POST", body: JSON.stringify({key: input.value})});
      csrf = body.csrf;
      input.value = "";
      route();
    } catch (e) {
      flash(msg, e.message, true);
    }
  }},
  el("h1", {}, "Log in"),
  el("p", {className: "muted"}, "Use one of the client keys of `batchrelay serve` ([serve] api_keys_env)."),
  el("label", {htmlFor: "key"}, "Key"), input,
  el("button", {type: "submit", id: "login-button"}, "Log in"), msg);
  main.replaceChildren(form);
  input.focus();
}

async function ensureSession() {
  if (csrf) return true;
  try {
    csrf = (await api("/session")).csrf;
    return true;
  } catch (e) {
    showLogin("");
    return false;
  }
}

function batchesView(filter) {
  const select = el("select", {id: "status-filter", onchange: () => { location.hash = select.value ? "#/?status=" + encodeURIComponent(select.value) : "#/"; }},
                    el("option", {value: ""}, "all statuses"));
  const body = el("tbody", {id: "batch-rows"});
  const head = el("tr", {}, ...["Batch", "Status", "Progress", "Succeeded", "Failed", "Invalid", "Pending", "Cost", "Age", "ETA"]
    .map((h, i) => el("th", {className: i >= 5 && i !== 7 ? "opt" : ""}, h)));
  const empty = el("p", {className: "muted", id: "no-batches", hidden: true}, "No batches yet.");
  main.replaceChildren(el("section", {},
    el("div", {className: "titlebar"}, el("h1", {}, "Batches"), el("label", {className: "filter"}, "Show ", select)),
    el("div", {className: "scroll"}, el("table", {className: "grid", id: "batch-table"}, el("thead", {}, head), body)), empty));
  poll(async () => {
    const data = await api("/batches" + (filter ? "?status=" + encodeURIComponent(filter) : ""));
    const known = new Set([...select.options].map((o) => o.value));
    for (const s of [...data.statuses, filter].filter(Boolean)) {
      if (!known.has(s)) { select.append(el("option", {value: s}, s)); known.add(s); }
    }
    select.value = filter || "";
    empty.hidden = data.batches.length > 0;
    body.replaceChildren(...data.batches.map((b) => el("tr", {dataset: {batch: b.id}},
      el("td", {className: "name"}, el("a", {href: "#/batch/" + encodeURIComponent(b.id)}, b.name || b.id),
         el("div", {className: "muted small"}, b.id)),
      el("td", {}, badge(b.status)),
      el("td", {className: "wide"}, progress(b.counts)),
      el("td", {className: "num", dataset: {label: "succeeded"}}, b.counts.succeeded),
      el("td", {className: "num opt"}, b.counts.failed),
      el("td", {className: "num opt"}, b.counts.invalid),
      el("td", {className: "num opt"}, b.counts.pending),
      el("td", {className: "num", dataset: {label: "cost"}}, usd(b.cost_usd)),
      el("td", {className: "num opt"}, age(b.age_s)),
      el("td", {className: "num opt"}, b.finished ? "done" : (b.eta_s === null ? "–" : age(b.eta_s))))));
  });
}

function chart(points, key, title, cumulative) {
  const W = 600, H = 170, L = 64, B = 24, T = 22;
  const box = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title});
  box.append(svg("text", {x: 4, y: 15, class: "chart-title"}, title));
  let acc = 0;
  const ys = points.map((p) => (cumulative ? (acc += p[key]) : p[key]));
  const top = Math.max(...ys, cumulative ? 0.000001 : 1);
  const x = (i) => L + (points.length < 2 ? (W - L - 8) / 2 : (i * (W - L - 8)) / (points.length - 1));
  const y = (v) => H - B - ((H - B - T) * v) / top;
  box.append(svg("line", {x1: L, y1: H - B, x2: W - 4, y2: H - B, class: "axis"}));
  box.append(svg("text", {x: L - 4, y: T + 4, class: "tick", "text-anchor": "end"}, cumulative ? "$" + Number(top.toPrecision(3)) : String(top)));
  box.append(svg("text", {x: L - 4, y: H - B, class: "tick", "text-anchor": "end"}, "0"));
  if (!points.length) {
    box.append(svg("text", {x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle"}, "no lines ended yet"));
    return box;
  }
  box.append(svg("text", {x: L, y: H - 6, class: "tick"}, clock(points[0].t)));
  box.append(svg("text", {x: W - 4, y: H - 6, class: "tick", "text-anchor": "end"}, clock(points[points.length - 1].t)));
  const coords = ys.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
  if (points.length === 1) box.append(svg("circle", {cx: x(0), cy: y(ys[0]), r: 4, class: "dot"}));
  else box.append(svg("polyline", {points: coords.join(" "), class: "line"}));
  return box;
}

function batchView(id) {
  const msg = el("div", {id: "action-message"});
  const head = el("div", {className: "titlebar"});
  const counts = el("div", {className: "counts", id: "counts"});
  const charts = el("div", {className: "charts"});
  const ledger = el("tbody", {});
  const errors = el("div", {id: "errors"});
  const budgetInput = el("input", {type: "text", inputMode: "decimal", id: "budget-input", placeholder: "new limit, USD", size: 10});
  const budgetNow = el("span", {className: "muted", id: "budget-now"});
  const act = async (what, body, confirmText) => {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      const done = await api("/batches/" + encodeURIComponent(id) + "/" + what, {method: "POST", body: JSON.stringify(body || {})});
      flash(msg, what === "retry" ? done.lines + " lines queued again" :
                 what === "budget" ? "limit set to $" + done.max_usd + (done.requeued_chunks ? "; waiting lines queued again" : "") :
                 "cancel requested", false);
    } catch (e) {
      if (e instanceof LoggedOut) return showLogin("");
      flash(msg, e.message, true);
    }
  };
  const cancelBtn = el("button", {type: "button", id: "cancel", className: "danger",
                                  onclick: () => act("cancel", null, "Cancel this batch? Lines not answered yet are marked cancelled.")}, "Cancel batch");
  const retryBtn = el("button", {type: "button", id: "retry", onclick: () => act("retry")}, "Retry failed lines");
  const budgetForm = el("form", {className: "inline", onsubmit: (ev) => { ev.preventDefault(); act("budget", {max_usd: budgetInput.value.trim()}); }},
                        el("label", {htmlFor: "budget-input"}, "Budget "), budgetInput, el("button", {type: "submit", id: "raise"}, "Set limit"), budgetNow);
  const base = API + "/batches/" + encodeURIComponent(id);
  const actions = el("div", {className: "actions card"}, cancelBtn, retryBtn, budgetForm,
    el("a", {href: base + "/results.jsonl", className: "button", id: "download-results"}, "Download results"),
    el("a", {href: base + "/errors.jsonl", className: "button", id: "download-errors"}, "Download errors"), msg);
  main.replaceChildren(el("section", {},
    el("p", {}, el("a", {href: "#/"}, "← all batches")), head, counts, actions, charts,
    el("h2", {}, "Cost by provider and model"),
    el("div", {className: "scroll"}, el("table", {className: "grid"}, el("thead", {}, el("tr", {},
      ...["Provider", "Model", "Calls", "Failed", "Input tokens", "Output tokens", "Cost"].map((h) => el("th", {}, h)))), ledger)),
    el("h2", {}, "Errors"), errors));
  poll(async () => {
    const d = await api("/batches/" + encodeURIComponent(id));
    const b = d.batch;
    document.title = (b.name || b.id) + " · batchrelay";
    head.replaceChildren(el("h1", {id: "batch-name"}, b.name || b.id), badge(b.status), el("span", {className: "muted small"}, b.id));
    const c = b.counts;
    const card = (label, value, cid) => el("div", {className: "count"}, el("div", {className: "value", id: cid || "", title: String(value)}, value), el("div", {className: "muted"}, label));
    counts.replaceChildren(el("div", {className: "count wide"}, progress(c, "batch-done")),
      card("succeeded", c.succeeded, "n-succeeded"), card("failed", c.failed), card("invalid", c.invalid),
      card("cancelled", c.cancelled, "n-cancelled"), card("expired", c.expired), card("pending", c.pending, "n-pending"),
      card("cost", usd(b.cost_usd), "batch-cost"), card("lines/s", b.rate_lines_per_s),
      card("ETA", b.finished ? "done" : (b.eta_s === null ? "–" : age(b.eta_s))), card("age", age(b.age_s)));
    cancelBtn.disabled = b.finished;
    retryBtn.disabled = !b.finished || b.status === "failed";
    budgetNow.textContent = d.budget.max_usd ? " now $" + d.budget.max_usd + ", spent $" + d.budget.spent_usd : " no limit set";
    charts.replaceChildren(el("div", {className: "card"}, chart(d.series, "lines", "lines per minute", false)),
                           el("div", {className: "card"}, chart(d.series, "cost_usd", "spend over time (USD, cumulative)", true)));
    ledger.replaceChildren(...d.ledger.map((r) => el("tr", {},
      el("td", {}, r.provider), el("td", {}, r.model), el("td", {className: "num"}, r.requests), el("td", {className: "num"}, r.failed),
      el("td", {className: "num"}, r.input), el("td", {className: "num"}, r.output), el("td", {className: "num"}, usd(r.cost_usd)))));
    if (!d.ledger.length) ledger.append(el("tr", {}, el("td", {colSpan: 7, className: "muted"}, "no calls billed yet")));
    const classes = d.errors.classes;
    errors.replaceChildren(
      classes.length ? el("p", {className: "muted small"}, d.errors.partial ? `a sample of ${d.errors.sampled} error records` : `${d.errors.sampled} error records`)
                     : el("p", {className: "muted"}, "No errors."),
      ...classes.map((k) => el("div", {className: "card errclass"},
        el("h3", {}, k.class, el("span", {className: "muted"}, " × " + k.count)),
        el("ul", {}, ...k.samples.map((s) => el("li", {}, el("span", {className: "line"}, "line " + s.line), " ", s.reason))))));
  });
}

function providersView() {
  const body = el("div", {className: "providers", id: "provider-cards"});
  main.replaceChildren(el("section", {}, el("div", {className: "titlebar"}, el("h1", {}, "Providers")), body));
  poll(async () => {
    const d = await api("/providers");
    body.replaceChildren(...d.providers.map((p) => {
      const calls = p.calls || {};
      const outcomes = Object.entries(calls).filter(([k]) => k !== "calls" && k !== "tokens" && k !== "ok");
      const pace = p.pace ? p.pace.calls_per_min + " calls/min" + (p.rpm ? " of " + p.rpm + " rpm" : "") +
                            ", " + p.pace.tokens_per_min + " tokens/min" + (p.tpm ? " of " + p.tpm + " tpm" : "")
                          : "measuring…" + (p.rpm ? " (limit " + p.rpm + " rpm)" : "") + (p.tpm ? " (limit " + p.tpm + " tpm)" : "");
      const row = (label, value) => el("div", {className: "kv"}, el("span", {className: "muted"}, label), el("span", {}, value));
      return el("div", {className: "card provider", dataset: {provider: p.name, state: p.state}},
        el("h2", {}, p.name, " ", badge(p.state)),
        p.until ? row("until", clock(p.until) + " (" + age(p.for_s) + ")") : null,
        p.cooling_models.length ? row("models cooling", p.cooling_models.join(", ")) : null,
        // calls in flight hold a lease (and are counted) only while a limit is in force
        (p.concurrency_limit || p.max_concurrency)
          ? row("in flight", p.in_flight + " of " + Math.min(...[p.concurrency_limit, p.max_concurrency].filter(Boolean)) +
                             (p.concurrency_limit ? " (limited after 429s or its slow start)" : " (max_concurrency)"))
          : row("in-flight limit", "none in force"),
        row("pace", pace),
        row("latency", p.latency_p50_ms !== undefined ? "p50 " + p.latency_p50_ms + " ms, p95 " + p.latency_p95_ms + " ms" : "–"),
        row("calls", (calls.calls || 0) + " (" + (calls.ok || 0) + " ok" + outcomes.map(([k, v]) => ", " + v + " " + k).join("") + ")"),
        row("spend today", usd(p.spend_today_usd)),
        p.last ? row("last outcome", p.last) : null,
        p.last_errors.length ? el("div", {}, el("div", {className: "muted"}, "last errors"),
          el("ul", {className: "small"}, ...p.last_errors.map((e) => el("li", {}, (e.at ? clock(e.at) + " " : "") + (e.status || "") + " " + e.error)))) : null);
    }));
  });
}

async function route() {
  if (!(await ensureSession())) return;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("here", false);
  if (hash.startsWith("#/batch/")) {
    batchView(decodeURIComponent(hash.slice("#/batch/".length)));
  } else if (hash.startsWith("#/providers")) {
    document.getElementById("nav-providers").classList.add("here");
    providersView();
  } else {
    document.getElementById("nav-batches").classList.add("here");
    const q = hash.indexOf("?status=");
    batchesView(q >= 0 ? decodeURIComponent(hash.slice(q + 8)) : "");
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("/logout", {method: "POST", body: "{}"}); } catch (e) { /* logged out either way */ }
  showLogin("");
});
window.addEventListener("hashchange", route);
route();
