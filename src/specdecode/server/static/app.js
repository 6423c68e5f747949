// specdecode's page: a chat and a file editor over this server's OpenAI API, every token coloured by the
// source that produced it (the opt-in `specdecode: {provenance: true}` extension of the stream).
// Plain JavaScript, no framework, no build step, nothing fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
// a new element of class `cls` holding `text`, appended to `parent` when given
function el(tag, cls, text, parent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}
const STORE = { chat: "specdecode.chat", key: "specdecode.key", settings: "specdecode.settings" };
const SETTINGS = ["system", "temperature", "max-tokens", "drafter", "gamma", "prediction"];
const LANGUAGES = { py: "python", js: "javascript", ts: "typescript", go: "go", rs: "rust", java: "java",
  c: "c", h: "c", cpp: "cpp", cc: "cpp", rb: "ruby", sh: "bash", md: "markdown", json: "json", yaml: "yaml",
  yml: "yaml", toml: "toml", html: "html", css: "css", sql: "sql", kt: "kotlin", swift: "swift", php: "php" };
// as `specdecode edit` asks (src/specdecode/edit.py)
const EDIT_SYSTEM = "You are a careful software engineer. Apply the user's instruction to the file and reply " +
  "with the complete updated file in one fenced code block, with no explanation before or after it.";

let info = null;        // GET /specdecode/info
let history = [];       // [{role, content, spans?, stats?, error?, note?}]
let running = null;     // the AbortController of the request in flight

// ---- the API ------------------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(STORE.key);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorOf(resp) {
  let message = resp.statusText || "request failed";
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON: keep the status text */ }
  return new APIError(resp.status, `Error ${resp.status}: ${message}`);
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: headers() });
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

// POST a streamed chat completion; onChunk(chunk) for every event; resolves when the stream ends
async function streamChat(body, signal, onChunk) {
  const resp = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new APIError(500, `Error: ${chunk.error.message}`);
        onChunk(chunk);
      }
    }
  }
}

function requestBody(messages, extra) {
  const gamma = $("gamma").value.trim();
  const speculative = { draft: $("drafter").value !== "none" };
  if (gamma && gamma !== "auto") speculative.gamma = Number(gamma);
  else speculative.gamma = "auto";
  return Object.assign({
    messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value || 0), max_tokens: Number($("max-tokens").value || 512),
    speculative, specdecode: { provenance: true },
  }, extra || {});
}

// ---- tokens and their sources ---------------------------------------------------------------------------
const NAMES = { prediction: "prediction", ngram: "n-gram", model: "draft model", grammar: "grammar" };

function family(source) {
  if (!source) return "unknown";
  if (source.startsWith("prediction")) return "prediction";
  if (source.startsWith("ngram")) return "ngram";
  if (source === "model" || source === "grammar" || source === "corrected") return source;
  if (source === "bonus" || source === "plain") return "target";
  return "unknown";
}

function describe(span) {
  const f = family(span.source);
  const p = span.p === undefined || span.p === null ? "" : `, acceptance probability ${span.p.toFixed(2)}`;
  if (NAMES[f]) return `${NAMES[f]} (${span.source}): draft accepted by the target${p}`;
  if (f === "corrected") {
    return `target: corrected a rejected ${NAMES[family(span.draft)] || span.draft} token` +
      (p ? ` (its acceptance probability ${span.p.toFixed(2)})` : "");
  }
  if (span.source === "bonus") return "target: bonus token after a fully accepted block";
  if (span.source === "plain") return "target: plain step, nothing drafted";
  return "source unknown";
}

function tokenNode(span) {
  const node = el("span", "tok src-" + family(span.source), span.text);
  node.dataset.source = span.source || "unknown";
  if (span.draft) node.dataset.draft = span.draft;
  node.title = describe(span);
  return node;
}

// spans cut to the characters [start, end) of the text they make up together
function sliceSpans(spans, start, end) {
  const out = [];
  let at = 0;
  for (const s of spans) {
    const a = Math.max(start, at), b = Math.min(end, at + s.text.length);
    if (a < b) out.push(Object.assign({}, s, { text: s.text.slice(a - at, b - at) }));
    at += s.text.length;
    if (at >= end) break;
  }
  return out;
}

// ---- the stats line -------------------------------------------------------------------------------------
function statsLine(usage, t, tokens) {
  const parts = [];
  const n = usage ? usage.completion_tokens : tokens;
  parts.push(`${n} tokens`);
  const seconds = (t.end - (t.first || t.start)) / 1000;
  const rate = usage && usage.decode_tokens_per_s ? usage.decode_tokens_per_s : (seconds > 0 ? n / seconds : 0);
  if (rate) parts.push(`${rate.toFixed(1)} tok/s`);
  if (t.first) parts.push(`TTFT ${((t.first - t.start) / 1000).toFixed(2)} s`);
  if (usage && usage.tokens_per_target_call !== undefined) {
    if (usage.draft_tokens) parts.push(`acceptance ${(100 * usage.acceptance_rate).toFixed(0)}%`);
    parts.push(`${usage.tokens_per_target_call.toFixed(2)} tokens/target call`);
    const cached = usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
    parts.push(`${cached} cached prompt tokens`);
    const d = usage.completion_tokens_details;
    if (d) parts.push(`prediction ${d.accepted_prediction_tokens} accepted / ${d.rejected_prediction_tokens} rejected`);
  }
  const plain = info && info.plain_tokens_per_s;
  if (plain && rate) parts.push(`${(rate / plain).toFixed(2)}× vs plain (${plain.toFixed(1)} tok/s measured)`);
  return parts.join(" · ");
}

// ---- chat -------------------------------------------------------------------------------------------------
function save() {
  try { localStorage.setItem(STORE.chat, JSON.stringify(history)); } catch (e) { /* full: keep in memory */ }
}

function messageNode(msg) {
  const node = el("div", "msg " + msg.role);
  el("div", "role", msg.role === "user" ? "you" : (info ? info.model : "assistant"), node);
  const content = el("div", "content", msg.spans ? undefined : msg.content, node);
  if (msg.spans) msg.spans.forEach((s) => content.appendChild(tokenNode(s)));
  footer(node, msg);
  return node;
}

// the lines under an answer: "stopped", the error, the stats
function footer(node, msg) {
  if (msg.note) el("div", "note", msg.note, node);
  if (msg.error) el("div", "error", msg.error, node).setAttribute("role", "alert");
  if (msg.stats) el("div", "stats", msg.stats, node);
}

function renderHistory() {
  const box = $("messages");
  box.querySelectorAll(".msg").forEach((n) => n.remove());
  $("empty").hidden = history.length > 0;
  history.forEach((m) => box.appendChild(messageNode(m)));
  box.scrollTop = box.scrollHeight;
}

function busy(on) {
  $("send").disabled = on; $("stop").disabled = !on;
  $("edit-run").disabled = on; $("edit-stop").disabled = !on;
}

// run one streamed answer into `node` (its .content), keeping its spans in `msg`
async function answer(body, node, msg) {
  const content = node.querySelector(".content");
  const box = $("messages");
  const t = { start: performance.now(), first: 0, end: 0 };
  let usage = null, tokens = 0;
  msg.spans = []; msg.content = "";
  running = new AbortController();
  busy(true);
  try {
    await streamChat(body, running.signal, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      const text = choice && choice.delta ? choice.delta.content : "";
      if (!text) return;
      if (!t.first) t.first = performance.now();
      const spans = chunk.specdecode ? chunk.specdecode.tokens : [{ text, source: "unknown" }];
      for (const s of spans) {
        content.appendChild(tokenNode(s));
        msg.spans.push(s);
        if (s.token !== undefined || s.source === "unknown") tokens += 1;
      }
      msg.content += text;
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
    });
  } catch (err) {
    if (err.name === "AbortError") msg.note = "stopped";
    else msg.error = err.message || String(err);
    if (err.status === 401) askKey();
  } finally {
    running = null;
    busy(false);
  }
  t.end = performance.now();
  if (msg.content || usage) msg.stats = statsLine(usage, t, tokens);
  footer(node, msg);
  refreshInfo();
  return usage;
}

async function send(event) {
  if (event) event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || running) return;
  $("input").value = "";
  history.push({ role: "user", content: text });
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  history.forEach((m) => { if (!m.error || m.content) messages.push({ role: m.role, content: m.content }); });
  const msg = { role: "assistant", content: "" };
  history.push(msg);
  renderHistory();
  const node = $("messages").lastElementChild;
  const extra = {};
  const prediction = $("prediction").value;
  if (prediction) extra.prediction = { type: "content", content: prediction };
  await answer(requestBody(messages, extra), node, msg);
  save();
}

// ---- edit mode ----------------------------------------------------------------------------------------
function fenced(name, text) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  const lang = name.includes(".") ? (LANGUAGES[ext] || "") : "";
  return "```" + lang + "\n" + text + (text.endsWith("\n") ? "" : "\n") + "```";
}

// the first fenced block's body and where it starts in the reply (the whole reply when it has none)
function extractCode(reply) {
  const start = reply.indexOf("```");
  if (start < 0) return { code: reply, at: 0 };
  const body = reply.indexOf("\n", start);
  if (body < 0) return { code: "", at: reply.length };
  const end = reply.indexOf("\n```", body);
  return { code: reply.slice(body + 1, end >= 0 ? end + 1 : reply.length), at: body + 1 };
}

function splitLines(text) {
  const lines = text.split(/(?<=\n)/);
  return lines.length && lines[lines.length - 1] === "" ? lines.slice(0, -1) : lines;
}

// line diff: common head and tail, longest common subsequence in between -> [[op, line, index]]
function diffLines(a, b) {
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head &&
         a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const A = a.slice(head, a.length - tail), B = b.slice(head, b.length - tail);
  const n = A.length, m = B.length, w = m + 1;
  const big = n * m > 4e6;  // too large a table: the middle is shown replaced whole
  const L = new Uint32Array(big ? 0 : (n + 1) * w);
  for (let i = big ? -1 : n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      L[i * w + j] = A[i] === B[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
    }
  }
  const ops = [];
  for (let k = 0; k < head; k++) ops.push(["ctx", k]);
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && A[i] === B[j]) { ops.push(["ctx", head + j]); i++; j++; }
    else if (i < n && (j === m || big || L[(i + 1) * w + j] >= L[i * w + j + 1])) {
      ops.push(["del", head + i]); i++;
    } else { ops.push(["add", head + j]); j++; }
  }
  for (let k = 0; k < tail; k++) ops.push(["ctx", b.length - tail + k]);
  return ops;  // ctx and add carry the new file's line index, del the original's
}

function renderDiff(original, reply, spans) {
  const out = $("edit-output");
  out.textContent = "";
  const { code, at } = extractCode(reply);
  const a = splitLines(original), b = splitLines(code);
  const offsets = [];
  let pos = at;
  for (const line of b) { offsets.push(pos); pos += line.length; }
  const ops = diffLines(a, b);
  const CONTEXT = 3;
  const near = ops.map(() => false);
  ops.forEach((op, k) => {
    if (op[0] !== "ctx") for (let d = -CONTEXT; d <= CONTEXT; d++) if (ops[k + d]) near[k + d] = true;
  });
  let folded = 0;
  const flush = () => {
    if (folded) el("div", "fold", `⋯ ${folded} unchanged line${folded > 1 ? "s" : ""}`, out);
    folded = 0;
  };
  ops.forEach(([kind, index], k) => {
    if (kind === "ctx" && !near[k]) { folded++; return; }
    flush();
    const line = el("div", "line " + kind, kind === "del" ? a[index].replace(/\n$/, "") : undefined, out);
    if (kind !== "del") {
      const end = offsets[index] + b[index].replace(/\n$/, "").length;
      sliceSpans(spans, offsets[index], end).forEach((s) => line.appendChild(tokenNode(s)));
    }
  });
  flush();
  if (!ops.some((op) => op[0] !== "ctx")) el("div", "fold", "no change", out);
  return code;
}

let editResult = "";

async function runEdit() {
  const original = $("edit-file").value, instruction = $("edit-instruction").value.trim();
  const name = $("edit-name").value.trim() || "file";
  if (!original || !instruction) { $("edit-status").textContent = "paste a file and write an instruction"; return; }
  const block = fenced(name, original);
  const user = `File \`${name.split("/").pop()}\`:\n\n${block}\n\nInstruction: ${instruction}\n\n` +
    "Reply with the complete updated file in one fenced code block.";
  const messages = [{ role: "system", content: EDIT_SYSTEM }, { role: "user", content: user }];
  const body = requestBody(messages, { prediction: { type: "content", content: block } });
  // unless set: room for the whole file and then some (as `specdecode edit`: 1.5x its tokens + 256)
  if (!$("max-tokens").dataset.touched) body.max_tokens = Math.ceil(original.length / 2) + 256;
  const out = $("edit-output");
  out.textContent = "";
  const node = el("div", "", undefined, out);
  el("div", "content raw", undefined, node);  // the reply as it streams; the diff replaces it at the end
  $("edit-stats").textContent = "";
  $("edit-copy").disabled = true;
  $("edit-status").textContent = "generating…";
  const msg = { role: "assistant", content: "" };
  await answer(body, node, msg);
  node.querySelector(".stats")?.remove();  // shown below the diff
  const finished = !msg.error && !msg.note;  // a failed or stopped reply stays as it came
  if (finished) editResult = renderDiff(original, msg.content, msg.spans);
  $("edit-stats").textContent = msg.stats || "";
  $("edit-status").textContent = msg.error ? "failed" : (msg.note || "done");
  $("edit-copy").disabled = !finished;
}

async function copyResult() {
  try {
    await navigator.clipboard.writeText(editResult);
    $("edit-status").textContent = "copied";
  } catch (e) {
    const area = el("textarea", "", undefined, document.body);
    area.value = editResult;
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    $("edit-status").textContent = ok ? "copied" : "copy failed: select the text and copy it";
  }
}

// ---- the server, the key, the settings --------------------------------------------------------------------
function askKey() {
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

async function refreshInfo() {
  try {
    info = await getJSON("/specdecode/info");
    const parts = [info.model, `drafter ${info.drafter || "none"}`, `gamma ${info.gamma}`];
    if (info.plain_tokens_per_s) parts.push(`plain ${info.plain_tokens_per_s.toFixed(1)} tok/s`);
    if (info.context) parts.push(`context ${info.context}`);
    $("server-line").textContent = parts.join(" · ");
    $("drafter").options[0].textContent = `server's: ${info.drafter || "none"}`;
  } catch (err) {
    $("server-line").textContent = err.message || String(err);
    if (err.status === 401) askKey();
  }
}

function setMode(mode) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.mode === mode));
  $("chat-view").hidden = mode !== "chat";
  $("edit-view").hidden = mode !== "edit";
  $("new-chat").hidden = mode !== "chat";
}

function restore() {
  try { history = JSON.parse(localStorage.getItem(STORE.chat) || "[]"); } catch (e) { history = []; }
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE.settings) || "{}"); } catch (e) { saved = {}; }
  SETTINGS.forEach((id) => { if (saved[id] !== undefined) $(id).value = saved[id]; });
  if (saved["max-tokens-touched"]) $("max-tokens").dataset.touched = "1";
}

function keepSettings() {
  const saved = {};
  SETTINGS.forEach((id) => { saved[id] = $(id).value; });
  saved["max-tokens-touched"] = !!$("max-tokens").dataset.touched;
  localStorage.setItem(STORE.settings, JSON.stringify(saved));
}

function init() {
  restore();
  renderHistory();
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  const stop = () => { if (running) running.abort(); };
  $("stop").addEventListener("click", stop);
  $("edit-stop").addEventListener("click", stop);
  $("edit-run").addEventListener("click", runEdit);
  $("edit-copy").addEventListener("click", copyResult);
  $("new-chat").addEventListener("click", () => { if (!running) { history = []; save(); renderHistory(); } });
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => setMode(t.dataset.mode)));
  SETTINGS.forEach((id) => $(id).addEventListener("change", keepSettings));
  $("max-tokens").addEventListener("input", () => { $("max-tokens").dataset.touched = "1"; keepSettings(); });
  $("key-form").addEventListener("submit", () => {
    localStorage.setItem(STORE.key, $("key-input").value.trim());
    refreshInfo();
  });
  refreshInfo();
}

document.addEventListener("DOMContentLoaded", init);
