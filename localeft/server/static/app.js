// The chat page: streams /v1/chat/completions (SSE) with beta and mode, shows each reply's
// stats and the token view (the `localeft` records of every token). No dependencies.
"use strict";

const BINS = [1, 3, 6]; // nats: the shades of localeft/tokenview.py
const MODEL_NAMES = { base: "large base", ft: "small ft", ref: "small base" };
const $ = (id) => document.getElementById(id);

const state = { messages: [], busy: false, controller: null, model: "localeft" };

function shade(r) {
  if (!r.differs_from_base) return null;
  const moved = Math.abs(r.shift || 0);
  return BINS.filter((b) => moved >= b).length;
}

function settings() {
  return {
    beta: Number($("beta").value),
    mode: document.querySelector('input[name="mode"]:checked').value,
    temperature: Number($("temperature").value),
    max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value) || 256)),
  };
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// --- rendering --------------------------------------------------------------------------------
function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  el.appendChild(body);
  $("messages").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function tokenSpan(r) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = r.text;
  const s = shade(r);
  if (s !== null) span.classList.add("moved", "s" + s);
  span.record = r;
  return span;
}

function fmt(x) {
  return x === null || x === undefined ? "–" : x.toFixed(3);
}

function statsLine(ext, usage) {
  const s = ext.stats;
  const parts = [
    `${s.generated_tokens} tokens`,
    `${s.tokens_per_second.toFixed(1)} tok/s`,
    `prompt ${s.prompt_tokens} (${s.prompt_evaluated} evaluated)`,
  ];
  if (s.speculative) {
    parts.push(`acceptance ${(100 * s.acceptance_rate).toFixed(0)}% (${s.accepted}/${s.drafted})`);
  }
  parts.push(`beta ${Number(ext.beta).toFixed(2)}`);
  if (ext.seed !== null && ext.seed !== undefined) parts.push(`seed ${ext.seed}`);
  if (ext.finish_reason && ext.finish_reason !== "eog") parts.push(`(${ext.finish_reason})`);
  if (usage) parts.push(`usage ${usage.prompt_tokens}+${usage.completion_tokens}`);
  return parts.join(" · ");
}

// --- the tooltip ------------------------------------------------------------------------------
function showTip(span, event) {
  const r = span.record;
  const tip = $("tip");
  const lines = [`${JSON.stringify(r.text)}  id ${r.id}`, `EFT      ${fmt(r.logprob)}  rank ${r.rank}`];
  for (const [label, lp] of Object.entries(r.models)) {
    lines.push(`${(MODEL_NAMES[label] || label).padEnd(10)} ${fmt(lp)}`);
  }
  if (r.shift !== null) lines.push(`moved by fine-tuning: ${r.shift >= 0 ? "+" : ""}${r.shift.toFixed(2)} nats`);
  if (r.differs_from_base) {
    const alt = r.top.find((t) => t.id === r.base_top);
    lines.push(`the large base alone would pick ${alt ? JSON.stringify(alt.text) : "id " + r.base_top}`);
  }
  tip.textContent = lines.join("\n");
  if (r.top.length) {
    tip.appendChild(document.createTextNode("\nalternatives (EFT):"));
    for (const t of r.top) {
      const row = document.createElement("div");
      row.textContent = `  ${JSON.stringify(t.text).padEnd(14)} ${fmt(t.logprob)}`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(60 * Math.exp(t.logprob))}px`;
      row.appendChild(bar);
      tip.appendChild(row);
    }
  }
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = event.clientY + 18 + tip.offsetHeight > window.innerHeight
    ? event.clientY - tip.offsetHeight - 10 : event.clientY + 18;
  tip.style.left = `${Math.max(8, x)}px`;
  tip.style.top = `${Math.max(8, y)}px`;
}

document.addEventListener("mouseover", (e) => {
  const span = e.target.closest && e.target.closest(".tok");
  if (span && span.record && $("view").checked) showTip(span, e);
  else $("tip").hidden = true;
});

// --- one exchange -----------------------------------------------------------------------------
async function send(text) {
  // This exchange belongs to the conversation it began in: "new chat" replaces
  // state.messages, and a reply stopped by it must not leak into the next conversation.
  const conversation = state.messages;
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const el = addMessage("assistant", "");
  el.classList.add("streaming");
  const body = el.querySelector(".body");
  const reply = { text: "", records: [] };
  const s = settings();
  const request = {
    model: state.model,
    messages: conversation,
    stream: true,
    stream_options: { include_usage: true },
    logprobs: true,
    top_logprobs: 5,
    ...s,
  };
  setBusy(true);
  state.controller = new AbortController();
  let ext = null;
  let usage = null;
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(request),
      signal: state.controller.signal,
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({ error: { message: res.statusText } }));
      throw new Error(`${res.status}: ${err.error ? err.error.message : res.statusText}`);
    }
    const reader = res.body.getReader();
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
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            reply.text += choice.delta.content;
            if (!chunk.localeft || !chunk.localeft.tokens) body.appendChild(document.createTextNode(choice.delta.content));
          }
          if (chunk.localeft && chunk.localeft.tokens) {
            for (const r of chunk.localeft.tokens) {
              reply.records.push(r);
              body.appendChild(tokenSpan(r));
            }
          }
          if (chunk.localeft && chunk.localeft.stats) ext = chunk.localeft;
        }
      }
      el.scrollIntoView({ block: "end" });
    }
    conversation.push({ role: "assistant", content: reply.text });
  } catch (err) {
    if (err.name === "AbortError") {
      conversation.push({ role: "assistant", content: reply.text });
    } else {
      conversation.pop();
      el.classList.add("error");
      body.textContent = String(err.message || err);
    }
  } finally {
    el.classList.remove("streaming");
    if (ext) {
      const stats = document.createElement("div");
      stats.className = "stats";
      stats.textContent = `${s.mode} · ` + statsLine(ext, usage);
      el.appendChild(stats);
    }
    setBusy(false);
    state.controller = null;
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

// --- controls ---------------------------------------------------------------------------------
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("messages").textContent = "";
});
$("beta").addEventListener("input", () => {
  $("beta-value").textContent = Number($("beta").value).toFixed(2);
});
$("view").addEventListener("change", () => {
  document.body.classList.toggle("plain", !$("view").checked);
  $("legend").classList.toggle("off", !$("view").checked);
});
$("api-key").addEventListener("change", () => sessionStorage.setItem("localeft-key", $("api-key").value));

(async function start() {
  $("api-key").value = sessionStorage.getItem("localeft-key") || "";
  try {
    const health = await (await fetch("/health")).json();
    state.model = health.model;
    $("model").textContent = `${health.model} · context ${health.n_ctx}`;
    $("beta").value = health.beta;
    $("beta-value").textContent = Number(health.beta).toFixed(2);
    $("key-row").hidden = !health.auth;
  } catch (err) {
    $("model").textContent = "(server unreachable)";
  }
})();
