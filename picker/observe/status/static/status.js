// llm-picker status page: polls /debug/status and redraws. No framework, no build step.
// Text from the picker (worker ids, models, request ids) goes in with textContent only.
"use strict";

const POLL_MS = 2000;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function num(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function percent(value) {
  return value === null || value === undefined ? "–" : Math.round(value * 100) + "%";
}

// A sparkline of `values` (nulls are gaps) scaled to [0, top].
function spark(values, top, className) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 160 28");
  svg.setAttribute("class", "spark " + className);
  const step = values.length > 1 ? 160 / (values.length - 1) : 0;
  let points = [];
  const flush = () => {
    if (points.length === 1) {  // a lone point would be an invisible line
      const [x, y] = points[0].split(",");
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x);
      dot.setAttribute("cy", y);
      dot.setAttribute("r", "2");
      svg.appendChild(dot);
    } else if (points.length) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", points.join(" "));
      svg.appendChild(line);
    }
    points = [];
  };
  values.forEach((v, i) => {
    if (v === null) { flush(); return; }
    const y = 26 - (top > 0 ? (v / top) * 24 : 0);
    points.push((i * step).toFixed(1) + "," + y.toFixed(1));
  });
  flush();
  return svg;
}

function stateOf(worker) {
  const s = worker.state;
  if (s.draining) return "draining";
  if (!s.healthy) return "unhealthy";
  if (!s.routable) return "circuit_open";
  return "healthy";
}

// The newest interval's value: null when that interval had no decisions, so a worker that
// stopped serving (dead, drained) shows no hit rate rather than its last one before.
function newest(values) {
  return values.length ? values[values.length - 1] : null;
}

function renderWorkers(status) {
  const body = document.querySelector("#workers tbody");
  const history = status.history.workers;
  const window = status.history.ages_secs.length * status.history.period_secs;
  document.querySelector("[data-window]").textContent =
    window ? "(last " + Math.round(window / 60 * 10) / 10 + " min)" : "";
  const topRate = Math.max(0.001, ...Object.values(history).flatMap(
    (h) => h.rate.filter((v) => v !== null)));
  const rows = status.workers.map((w) => {
    const tr = el("tr");
    const state = stateOf(w);
    tr.dataset.worker = w.id;
    tr.dataset.state = state;
    const engine = w.state.engine;
    const activity = history[w.id] || { rate: [], hit_rate: [] };
    const name = el("td", w.id);
    name.title = (w.models.length ? w.models.join(", ") : "any model");
    tr.append(name);
    const stateCell = el("td");
    stateCell.append(el("span", state, "state state-" + state));
    tr.append(stateCell, el("td", w.state.circuit.state));
    tr.append(el("td", w.state.in_flight, "num"));
    tr.append(el("td", w.state.prefill_ahead, "num"));
    tr.append(el("td", engine ? num(engine.waiting, 0) : "–", "num"));
    tr.append(el("td", engine ? percent(engine.kv_usage) : "–", "num"));
    const rate = el("td");
    rate.append(spark(activity.rate, topRate, "rate"), el("span", " " + num(newest(activity.rate), 1)));
    const hits = el("td");
    hits.append(spark(activity.hit_rate, 1, "hit"), el("span", " " + percent(newest(activity.hit_rate))));
    tr.append(rate, hits);
    return tr;
  });
  body.replaceChildren(...rows);
}

function renderDecisions(status) {
  document.getElementById("explain-off").hidden = status.explain.enabled;
  const rows = status.decisions.map((d) => {
    const tr = el("tr");
    tr.dataset.request = d.request_id;
    tr.append(el("td", num(d.age_secs, 1) + "s", "num"), el("td", d.request_id),
              el("td", d.model), el("td", d.policy), el("td", d.worker || "refused"),
              el("td", percent(d.match), "num"), el("td", d.reason));
    const excluded = el("td", d.excluded.map((e) => e.worker + ": " + e.reason).join(", "),
                        "excluded");
    tr.append(excluded);
    tr.append(el("td", d.audit ? percent(d.audit.observed_hit) : "", "num"));
    return tr;
  });
  document.querySelector("#decisions tbody").replaceChildren(...rows);
}

function renderAudit(status) {
  const rows = Object.entries(status.audit).map(([worker, a]) => {
    const tr = el("tr");
    tr.dataset.worker = worker;
    const ttft = a.ttft_error_secs === null ? "–" : num(a.ttft_error_secs * 1000, 0) + " ms";
    tr.append(el("td", worker), el("td", String(a.samples), "num"),
              el("td", a.hit_error === null ? "–" : num(a.hit_error * 100, 0) + " pts", "num"),
              el("td", ttft, "num"), el("td", a.drift ? "DRIFT" : "ok", a.drift ? "problem" : ""));
    return tr;
  });
  document.querySelector("#audit tbody").replaceChildren(...rows);
}

function renderPolicies(status) {
  const blocks = Object.entries(status.policies).map(([name, params]) => {
    const div = el("div", null, "policy");
    div.dataset.policy = name;
    div.append(el("strong", name + (name === status.policy ? " (default)" : "")));
    div.append(el("pre", JSON.stringify(params, null, 1)));
    return div;
  });
  document.getElementById("policies").replaceChildren(...blocks);
}

// Flow control's queues: "· 3 waiting (10: a 1, b 1; -1: batch 1)".
function flowSummary(flow) {
  if (!flow) return "";
  const bands = new Map();
  let total = 0;
  for (const row of flow.flows) {
    if (!row.queued) continue;
    total += row.queued;
    if (!bands.has(row.priority)) bands.set(row.priority, []);
    bands.get(row.priority).push(row.flow + " " + row.queued);
  }
  const parts = [...bands].map(([priority, flows]) => priority + ": " + flows.join(", "));
  return " · " + total + " waiting" + (parts.length ? " (" + parts.join("; ") + ")" : "");
}

// The outcomes shown, in the table's column order (picker.routing.flow.FlowOutcome values).
const FLOW_OUTCOMES = ["dispatched", "shed", "ttl_expired", "quota_exceeded", "queue_full",
                       "no_ready_worker", "cancelled"];

function renderFlows(status) {
  document.getElementById("flow").hidden = !status.flow;
  if (!status.flow) return;
  const rows = status.flow.flows.map((row) => {
    const tr = el("tr");
    tr.dataset.priority = row.priority;
    tr.dataset.flow = row.flow;
    tr.append(el("td", row.priority, "num"), el("td", row.flow), el("td", row.queued, "num"),
              el("td", row.queued ? num(row.oldest_wait_secs, 2) + " s" : "–", "num"),
              ...FLOW_OUTCOMES.map((outcome) => el("td", row.left[outcome], "num")));
    return tr;
  });
  document.querySelector("#flows tbody").replaceChildren(...rows);
}

function render(status) {
  const s = status.stats;
  document.getElementById("summary").textContent =
    "policy " + status.policy + " · " + s.healthy_workers + "/" + s.total_workers +
    " workers healthy · " + status.active_requests + " requests in flight" +
    flowSummary(status.flow) + (status.draining ? " · draining" : "");
  document.getElementById("updated").textContent =
    "updated " + new Date().toLocaleTimeString();
  renderWorkers(status);
  renderFlows(status);
  renderDecisions(status);
  renderAudit(status);
  renderPolicies(status);
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const reply = await fetch("debug/status", { cache: "no-store" });
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    render(await reply.json());
    problem.hidden = true;
  } catch (error) {
    problem.textContent = "picker unreachable: " + error.message;
    problem.hidden = false;
  }
  setTimeout(poll, POLL_MS);
}

// The page arrives with its first status (first_page, server side): drawn at once, then
// polled.
const first = document.getElementById("first-status");
if (first) render(JSON.parse(first.textContent));
setTimeout(poll, first ? POLL_MS : 0);
