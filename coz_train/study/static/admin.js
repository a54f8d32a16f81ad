// The admin page: progress per rater and the live per-condition table, refreshed every 5 s.
"use strict";

const token = decodeURIComponent(location.pathname.split("/").pop());
const api = `../api/admin/${encodeURIComponent(token)}/progress`;

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

function row(values) {
  const tr = document.createElement("tr");
  for (const v of values) tr.appendChild(typeof v === "object" && v !== null ? v : cell(v));
  return tr;
}

function bar(fraction) {
  const td = document.createElement("td");
  const outer = document.createElement("div");
  outer.className = "minibar";
  const inner = document.createElement("div");
  inner.style.width = `${Math.round(100 * fraction)}%`;
  outer.appendChild(inner);
  td.appendChild(outer);
  return td;
}

function ago(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 90) return `${Math.round(s)} s ago`;
  return s < 5400 ? `${Math.round(s / 60)} min ago` : new Date(t * 1000).toLocaleString();
}

async function refresh() {
  try {
    const response = await fetch(api, { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    const raters = document.querySelector("#raters tbody");
    raters.replaceChildren(...data.raters.map((r) =>
      row([r.rater, r.answered, r.total, bar(r.total ? r.answered / r.total : 0), ago(r.last_answer)])));
    const mos = data.results.filter((r) => "mean" in r);
    const head = document.querySelector("#results thead");
    const body = document.querySelector("#results tbody");
    if (data.mode === "pair") {
      head.replaceChildren(row(["test", "condition", "wins", "losses", "unsure"]));
      body.replaceChildren(...data.results.filter((r) => "wins" in r)
        .map((r) => row([r.test, r.condition, r.wins, r.losses, r.unsure])));
    } else {
      head.replaceChildren(row(["test", "condition", "n", "mean", "sd"]));
      body.replaceChildren(...mos.map((r) => row([r.test, r.condition, r.n, r.mean.toFixed(2),
                                                   r.sd === null ? "" : r.sd.toFixed(2)])));
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.getElementById("status").textContent = "";
    document.body.dataset.ready = "1";
  } catch (err) {
    document.getElementById("status").textContent = `Could not refresh: ${err.message}`;
  }
}

refresh();
setInterval(refresh, 5000);
