// The imgproc web page: pick images, build the option form from /v1/plugins, run a job,
// poll its status, show each result beside its input. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("imgproc-token") || "", plugins: [], files: [] };

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    askToken("the server wants a token");
    throw new Error("unauthorised");
  }
  return response;
}

async function errorOf(response) {
  try { return (await response.json()).error || response.statusText; }
  catch { return response.statusText; }
}

function askToken(message) {
  $("token-form").hidden = false;
  $("token-error").textContent = state.token ? "that token was refused" : message || "";
  $("token").focus();
}

// -- plugins and their option form -------------------------------------------------------

async function loadPlugins() {
  const health = await (await fetch("/healthz")).json();
  $("server").textContent = `${health.workers} worker(s), queue ${health.queue.pending}/${health.queue.capacity}`;
  $("token-button").hidden = !health.auth;
  const response = await api("/v1/plugins");
  const data = await response.json();
  state.plugins = data.processors.filter((p) => p.http);
  const select = $("plugin");
  select.replaceChildren(...state.plugins.map((p) => new Option(p.name, p.name)));
  $("token-form").hidden = true;
  buildOptions();
  updateRun();
}

function currentPlugin() {
  return state.plugins.find((p) => p.name === $("plugin").value);
}

function buildOptions() {
  const plugin = currentPlugin();
  $("summary").textContent = plugin ? plugin.summary : "no processor can run over HTTP";
  $("options").replaceChildren(...(plugin ? plugin.options : [])
    .filter((o) => !o.image).map(optionField));
}

function optionField(option) {
  const label = document.createElement("label");
  label.append(option.name);
  let input;
  if (option.choices) {
    input = document.createElement("select");
    input.append(...option.choices.map((c) => new Option(c, c, false, c === option.default)));
  } else if (option.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(option.default);
  } else {
    input = document.createElement("input");
    input.type = option.type === "str" ? "text" : "number";
    if (option.type === "int") input.step = "1";
    if (option.type === "float") input.step = "any";
    if (option.min !== undefined) input.min = option.min;
    if (option.max !== undefined) input.max = option.max;
    if (option.default !== null) input.value = option.default;
    else input.placeholder = "default";
  }
  input.name = `opt-${option.name}`;
  input.dataset.type = option.type;
  label.append(input);
  if (option.help) {
    const help = document.createElement("small");
    help.textContent = option.help;
    label.append(help);
  }
  return label;
}

function optionValues() {
  const values = {};
  for (const input of $("options").querySelectorAll("input, select")) {
    const name = input.name.slice(4);
    if (input.type === "checkbox") values[name] = input.checked;
    else if (input.value === "") continue;
    else if (input.dataset.type === "int") values[name] = parseInt(input.value, 10);
    else if (input.dataset.type === "float") values[name] = parseFloat(input.value);
    else values[name] = input.value;
  }
  return values;
}

// -- picking files ---------------------------------------------------------------------------

function pick(fileList) {
  state.files = Array.from(fileList).filter((f) => f.size > 0);
  $("picked").replaceChildren(...state.files.map((f) => {
    const li = document.createElement("li");
    li.textContent = `${f.name} (${Math.ceil(f.size / 1024)} kB)`;
    return li;
  }));
  updateRun();
}

function updateRun() {
  $("run").disabled = !(state.files.length && currentPlugin());
}

// -- running a job and showing results -------------------------------------------------------

async function run() {
  $("run").disabled = true;
  $("results").replaceChildren();
  $("download-all").hidden = true;
  const form = new FormData();
  form.append("plugin", $("plugin").value);
  form.append("options", JSON.stringify(optionValues()));
  form.append("format", $("format").value);
  state.files.forEach((f) => form.append("files", f, f.name));
  setStatus("uploading…");
  try {
    const response = await api("/v1/jobs", { method: "POST", body: form });
    if (response.status !== 202) {
      const retry = response.headers.get("Retry-After");
      setStatus(`refused: ${await errorOf(response)}${retry ? ` (retry in ${retry} s)` : ""}`, true);
      return;
    }
    const job = await response.json();
    const inputs = new Map(job.images.map((img, i) => [img.name, state.files[i]]));
    await follow(job, inputs);
  } catch (err) {
    if (err.message !== "unauthorised") setStatus(`error: ${err.message}`, true);
  } finally {
    updateRun();
  }
}

async function follow(job, inputs) {
  const shown = new Set();
  const progress = $("progress");
  progress.hidden = false;
  progress.max = job.images.length;
  for (;;) {
    for (const image of job.images) {
      if (!shown.has(image.name) && (image.status === "done" || image.status === "failed")) {
        shown.add(image.name);
        await showResult(image, inputs.get(image.name));
      }
    }
    progress.value = shown.size;
    setStatus(`${job.status}: ${job.counts.done} done, ${job.counts.failed} failed of ${job.images.length}`);
    if (job.status === "done") break;
    await new Promise((resolve) => setTimeout(resolve, 400));
    job = await (await api(job.url)).json();
  }
  if (job.counts.done) {
    const blob = await (await api(job.archive)).blob();
    const link = $("download-all");
    link.href = URL.createObjectURL(blob);
    link.download = `imgproc-${job.id}.zip`;
    link.hidden = false;
  }
}

async function showResult(image, file) {
  const card = document.createElement("article");
  card.className = "result";
  card.dataset.status = image.status;
  card.dataset.name = image.name;
  const title = document.createElement("h3");
  title.textContent = image.name;
  card.append(title);
  const meta = document.createElement("div");
  meta.className = "meta";
  if (image.status === "done") {
    const blob = await (await api(image.url)).blob();
    const url = URL.createObjectURL(blob);
    card.append(compare(file ? URL.createObjectURL(file) : url, url));
    const link = document.createElement("a");
    link.className = "download";
    link.href = url;
    link.download = image.output;
    link.textContent = `Download ${image.output}`;
    meta.append(`${image.ms} ms`, link);
  } else {
    meta.classList.add("error");
    meta.textContent = `failed: ${image.reason}`;
  }
  card.append(meta);
  $("results").append(card);
}

function compare(beforeUrl, afterUrl) {
  // The output is drawn over the input and clipped: drag the slider to move the seam.
  const box = document.createElement("div");
  box.className = "compare";
  const before = new Image();
  before.className = "before";
  before.src = beforeUrl;
  before.alt = "input";
  const after = new Image();
  after.className = "after";
  after.src = afterUrl;
  after.alt = "output";
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = 0;
  slider.max = 100;
  slider.value = 50;
  slider.setAttribute("aria-label", "before / after");
  const clip = () => { after.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", clip);
  clip();
  box.append(before, after);
  const wrapper = document.createElement("div");
  wrapper.append(box, slider);
  return wrapper;
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").className = bad ? "error" : "";
}

// -- wiring ------------------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => pick(e.target.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files);
  });
  $("plugin").addEventListener("change", () => { buildOptions(); updateRun(); });
  $("run").addEventListener("click", run);
  $("token-button").addEventListener("click", () => askToken(""));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("imgproc-token", state.token);
    loadPlugins().catch(() => {});
  });
  loadPlugins().catch((err) => {
    if (err.message !== "unauthorised") setStatus(`cannot reach the server: ${err.message}`, true);
  });
}

wire();
