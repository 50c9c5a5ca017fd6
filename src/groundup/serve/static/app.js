// groundup's web page: plain JS, no libraries, nothing from the network but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, ids: [], pieces: [], probs: [], promptLength: 0, inspection: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value;
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

// ---- colours --------------------------------------------------------------------------------
// token probability p in [0, 1] → red (unlikely) … green (likely)
function probColor(p) { return `hsl(${Math.round(120 * p)}, 75%, 80%)`; }
// attention weight w in [0, 1] → white … dark blue, as [r, g, b]
function heat(w) {
  const v = Math.max(0, Math.min(1, w));
  return [Math.round(255 * (1 - v)), Math.round(255 * (1 - 0.75 * v)), Math.round(255 * (1 - 0.35 * v))];
}
// a value in [-1, 1] → blue … white … red
function diverging(x) {
  const v = Math.max(-1, Math.min(1, x));
  return v >= 0 ? [255, Math.round(255 * (1 - v)), Math.round(255 * (1 - v))]
                : [Math.round(255 * (1 + v)), Math.round(255 * (1 + v)), 255];
}
window.groundupHeat = heat;  // the browser test checks drawn pixels against it

// ---- tabs -----------------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === b));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === b.dataset.tab));
  if (b.dataset.tab === "positions") drawPositions();
  if (b.dataset.tab === "embeddings") drawPCA();
}));
$("api-key").value = localStorage.getItem("groundup-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("groundup-api-key", $("api-key").value); init(); });

// ---- generate: stream tokens from /v1/completions ----------------------------------------------
function addToken(id, piece, prob, position, isPrompt) {
  const span = document.createElement("span");
  span.className = "tok" + (isPrompt ? " prompt" : "");
  span.textContent = piece.replace(/\n/g, "⏎\n");  // a newline token gets a visible, clickable mark
  span.dataset.pos = position;
  if (prob !== null) {
    span.dataset.prob = prob;
    span.style.background = probColor(prob);
    span.title = `p = ${prob.toFixed(4)}`;
  }
  span.addEventListener("click", () => select(position));
  $("output").appendChild(span);
}

async function generate() {
  $("status").textContent = "";
  $("output").textContent = "";
  $("dist").textContent = "";
  $("attention").textContent = "";
  state.inspection = null;
  try {
    const tok = await api("/api/tokenize", { text: $("prompt").value });
    state.ids = tok.ids.slice(); state.pieces = tok.pieces.slice(); state.probs = tok.ids.map(() => null);
    state.promptLength = tok.ids.length;
    tok.ids.forEach((id, i) => addToken(id, tok.pieces[i], null, i, true));
    const body = { model: state.model, prompt: $("prompt").value, max_tokens: Number($("max-tokens").value),
                   temperature: Number($("temperature").value), logprobs: 0, stream: true, return_token_ids: true };
    if ($("seed").value !== "") body.seed = Number($("seed").value);
    const r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!r.ok) { const e = await r.json(); throw new Error(e.error.message); }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const c = chunk.choices[0];
        (c.token_ids || []).forEach((id, k) => {
          const prob = Math.exp(c.logprobs.token_logprobs[k]);
          const position = state.ids.length;
          state.ids.push(id); state.pieces.push(k === 0 ? c.text : ""); state.probs.push(prob);
          addToken(id, k === 0 ? c.text : "", prob, position, false);
        });
      }
    }
    $("output").dataset.done = "1";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}
$("go").addEventListener("click", generate);

// ---- inspect: next-token distribution and attention at one position ---------------------------
async function select(position) {
  document.querySelectorAll(".tok").forEach((s) => s.classList.toggle("selected", Number(s.dataset.pos) === position));
  try {
    if (!state.inspection || state.inspection.ids.length !== state.ids.length) {
      state.inspection = await api("/api/inspect", { ids: state.ids });
    }
  } catch (e) { $("status").textContent = "error: " + e.message; return; }
  const ins = state.inspection;
  $("at-token").textContent = JSON.stringify(ins.pieces.slice(0, position + 1).join("").slice(-20));
  const dist = $("dist");
  dist.textContent = "";
  ins.top[position].forEach((t) => {
    const row = dist.insertRow();
    row.insertCell().textContent = JSON.stringify(t.piece);
    row.insertCell().textContent = t.prob.toFixed(4);
    const bar = document.createElement("div");
    bar.className = "bar"; bar.style.width = Math.round(200 * t.prob) + "px";
    row.insertCell().appendChild(bar);
  });
  drawAttention(ins, position);
}

function drawAttention(ins, t) {
  const box = $("attention");
  box.textContent = "";
  const n = t + 1, label = 92, top = 30;
  const short = { "previous-token": "prev", "induction": "induct", "sink": "sink" };
  const cell = Math.max(6, Math.min(22, Math.floor(640 / n))), rowH = 16;
  ins.attention.forEach((layer, l) => {
    const canvas = document.createElement("canvas");
    canvas.width = label + n * cell; canvas.height = top + ins.n_head * rowH;
    canvas.className = "heatmap";
    canvas.dataset.layer = l; canvas.dataset.position = t; canvas.dataset.cell = cell;
    canvas.dataset.left = label; canvas.dataset.top = top; canvas.dataset.rowHeight = rowH;
    const rows = layer.map((head) => head[t].slice(0, n));  // head's attention row t over 0..t
    canvas.dataset.weights = JSON.stringify(rows);
    canvas.dataset.kinds = JSON.stringify(ins.head_kinds[l]);  // measured head types (geometry lab's scores)
    const g = canvas.getContext("2d");
    g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = "#000"; g.font = "11px sans-serif";
    g.fillText(`layer ${l}`, 2, 12);
    if (cell >= 9) {  // the earlier tokens along the top ("\n" shown as ⏎)
      g.font = "11px monospace";
      ins.pieces.slice(0, n).forEach((p, s) => g.fillText(p === "\n" ? "⏎" : p.slice(0, 2), label + s * cell + 1, top - 4));
      g.font = "11px sans-serif";
    }
    rows.forEach((row, h) => {
      // its measured type, or (below every threshold) its strongest score in parentheses
      const kinds = ins.head_kinds[l][h].map((k) => short[k] || k).join(",");
      const best = Object.keys(short).reduce((a, b) => (ins.head_scores[b][l][h] > ins.head_scores[a][l][h] ? b : a));
      const text = kinds ? `h${h} ${kinds}` : `h${h} (${short[best]} ${ins.head_scores[best][l][h].toFixed(2)})`;
      g.fillStyle = "#000"; g.fillText(text, 4, top + h * rowH + 12);
      row.forEach((w, s) => {
        const [r, gg, b] = heat(w);
        g.fillStyle = `rgb(${r},${gg},${b})`;
        g.fillRect(label + s * cell, top + h * rowH, cell, rowH);
      });
    });
    canvas.title = "columns: " + ins.pieces.slice(0, n).map((p) => JSON.stringify(p)).join(" ");
    box.appendChild(canvas);
  });
}

// ---- positional encodings ---------------------------------------------------------------------
async function drawPositions() {
  const pe = await api("/api/positions");
  $("pos-note").textContent = `This model uses ${pe.model_positional} positions; the table is the 2017 sinusoids at its size ` +
    `(${pe.block_size} positions × ${pe.n_embd} dimensions).`;
  const canvas = $("pe-table"), s = Math.max(1, Math.floor(640 / pe.n_embd)), sy = Math.max(1, Math.floor(320 / pe.block_size));
  canvas.width = pe.n_embd * s; canvas.height = pe.block_size * sy;
  const g = canvas.getContext("2d");
  pe.table.forEach((row, p) => row.forEach((x, i) => {
    const [r, gg, b] = diverging(x); g.fillStyle = `rgb(${r},${gg},${b})`; g.fillRect(i * s, p * sy, s, sy);
  }));
  linePlot($("pe-dots"), pe.offsets, pe.dots, "offset p − q", "PE(p)·PE(q)");
}

function linePlot(svg, xs, ys, xlabel, ylabel) {
  const W = svg.width.baseVal.value, H = svg.height.baseVal.value, m = 40;
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
  const X = (x) => m + (W - 2 * m) * (x - x0) / (x1 - x0 || 1), Y = (y) => H - m - (H - 2 * m) * (y - y0) / (y1 - y0 || 1);
  const pts = xs.map((x, i) => `${X(x).toFixed(1)},${Y(ys[i]).toFixed(1)}`).join(" ");
  svg.innerHTML = `<line x1="${m}" y1="${Y(0)}" x2="${W - m}" y2="${Y(0)}" stroke="#aaa"/>` +
    `<polyline fill="none" stroke="#c33" stroke-width="1.5" points="${pts}"/>` +
    `<text x="${W / 2}" y="${H - 8}" text-anchor="middle" font-size="12">${xlabel}</text>` +
    `<text x="4" y="14" font-size="12">${ylabel} (max ${y1.toFixed(1)})</text>`;
}

// ---- embeddings -------------------------------------------------------------------------------
async function drawPCA() {
  const d = await api("/api/embeddings/pca");
  $("pca-note").textContent = `${d.ids.length} tokens; the two components explain ` +
    `${(100 * d.explained[0]).toFixed(1)}% and ${(100 * d.explained[1]).toFixed(1)}% of the variance.`;
  const svg = $("pca"), W = 640, H = 480, m = 20;
  const xs = d.xy.map((p) => p[0]), ys = d.xy.map((p) => p[1]);
  const X = (x) => m + (W - 2 * m) * (x - Math.min(...xs)) / (Math.max(...xs) - Math.min(...xs) || 1);
  const Y = (y) => H - m - (H - 2 * m) * (y - Math.min(...ys)) / (Math.max(...ys) - Math.min(...ys) || 1);
  const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  svg.innerHTML = d.xy.map((p, i) => d.ids.length <= 300
    ? `<text x="${X(p[0]).toFixed(1)}" y="${Y(p[1]).toFixed(1)}" font-size="11" font-family="monospace">${esc(JSON.stringify(d.pieces[i]).slice(1, -1))}</text>`
    : `<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="2" fill="#36c"><title>${esc(JSON.stringify(d.pieces[i]))}</title></circle>`).join("");
}

async function nearest() {
  const table = $("nearest");
  table.textContent = "";
  try {
    const d = await api("/api/embeddings/nearest?token=" + encodeURIComponent($("near-token").value));
    d.nearest.forEach((n) => {
      const row = table.insertRow();
      row.insertCell().textContent = JSON.stringify(n.piece);
      row.insertCell().textContent = n.cosine.toFixed(3);
    });
  } catch (e) { table.insertRow().insertCell().textContent = "error: " + e.message; }
}
$("near-go").addEventListener("click", nearest);

async function init() {
  try {
    const m = await api("/v1/models");
    state.model = m.data[0].id;
    $("model-name").textContent = `— ${state.model} (context ${m.data[0].context_length})`;
    $("status").textContent = "";
  } catch (e) { $("status").textContent = "error: " + e.message; }
}
init();
