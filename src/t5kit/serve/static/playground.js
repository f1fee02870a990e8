// The t5kit playground: builds a /v1/generate request from the form and shows the answer,
// token by token when streaming (server-sent events read from a fetch body, since EventSource
// cannot POST). No framework and no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let tasks = {};
let controller = null;

function setStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text || state;
}

function showPrefix() {
  const task = $("task").value;
  $("prefix").textContent = task ? (tasks[task] || "") : "";
}

function useExample() {
  const option = $("task").selectedOptions[0];
  if (option && option.dataset.example !== undefined) $("input").value = option.dataset.example;
  showPrefix();
}

function showMode() {
  const mode = $("mode").value;
  document.querySelectorAll(".sample-only").forEach((el) => { el.hidden = mode !== "sample"; });
  document.querySelectorAll(".beam-only").forEach((el) => { el.hidden = mode !== "beam"; });
  const stream = $("stream");
  stream.disabled = mode === "beam";  // beam search decides its output at the end
  if (mode === "beam") stream.checked = false;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function buildRequest() {
  const mode = $("mode").value;
  const parameters = { max_new_tokens: number("max_new_tokens") };
  const rp = number("repetition_penalty");
  if (rp !== null && rp !== 1) parameters.repetition_penalty = rp;
  const ng = number("no_repeat_ngram_size");
  if (ng) parameters.no_repeat_ngram_size = ng;
  if (mode === "sample") {
    parameters.do_sample = true;
    parameters.temperature = number("temperature");
    for (const key of ["top_k", "top_p", "seed"]) {
      const v = number(key);
      if (v !== null) parameters[key] = v;
    }
  } else if (mode === "beam") {
    parameters.num_beams = number("num_beams");
    parameters.length_penalty = number("length_penalty");
  }
  for (const key of Object.keys(parameters)) if (parameters[key] === null) delete parameters[key];
  const body = { inputs: $("input").value, parameters, stream: $("stream").checked };
  if ($("task").value) body.task = $("task").value;
  if ($("adapter").value) body.adapter = $("adapter").value;
  return body;
}

function showError(error) {
  const el = $("error");
  el.hidden = false;
  el.textContent = error && error.message ? error.message : String(error);
  setStatus("error", "error");
}

function showStats(out, latency) {
  const parts = [`${out.output_tokens} tokens`, `stop: ${out.stop_reason}`, `${out.input_tokens} input tokens`];
  if (latency) parts.push(`${latency.toFixed(2)} s`, `${(out.output_tokens / latency).toFixed(1)} tokens/s`);
  $("stats").textContent = parts.join(" · ");
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

async function generate() {
  if (controller) return;
  const body = buildRequest();
  $("output").textContent = "";
  $("stats").textContent = "";
  $("error").hidden = true;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("running", "generating…");
  controller = new AbortController();
  const started = performance.now();
  try {
    const response = await fetch("/v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const payload = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw payload.error || payload;
    }
    if (body.stream) {
      let last = null;
      await readEvents(response, (event, data) => {
        if (event === "token") $("output").textContent += data.text;
        else if (event === "end") { $("output").textContent = data.text; last = data; }
        else if (event === "error") throw data.error;
        else if (event === "done" && last) showStats(last, data.latency_s);
      });
    } else {
      const data = await response.json();
      const out = data.outputs[0];
      $("output").textContent = out.text;
      showStats(out, data.latency_s || (performance.now() - started) / 1000);
    }
    setStatus("done", "done");
  } catch (error) {
    if (error && error.name === "AbortError") setStatus("stopped", "stopped");
    else showError(error);
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function loadModel() {
  try {
    const info = await (await fetch("/v1/models")).json();
    const model = info.data[0];
    tasks = model.tasks || {};
    const millions = (model.parameters / 1e6).toFixed(1);
    $("model").textContent = `${model.id} · ${millions}M params · ${model.dtype}`;
    const limit = info.limits && info.limits.max_new_tokens;
    if (limit) $("max_new_tokens").max = limit;
    for (const name of model.adapters || []) {  // the LoRA adapters the server holds over its base
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $("adapter").append(option);
    }
    $("adapter-row").hidden = !(model.adapters && model.adapters.length);
    showPrefix();
  } catch (error) {
    $("model").textContent = "model info unavailable";
  }
}

$("task").addEventListener("change", useExample);
$("mode").addEventListener("change", showMode);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
});
useExample();
showMode();
loadModel();
