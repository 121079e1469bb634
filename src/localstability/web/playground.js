// The playground page: a form over the public REST API (docs/playground.md). Every call goes
// through api.js with the key pasted in the page; nothing here talks to the server otherwise.

import { ApiError, Client, finished } from "./api.js";
import * as catalogue from "./engines.js";
import { LoraPicker } from "./loras.js";
import { InitImage, MaskPainter } from "./stage.js";

const { TEXT_TO_IMAGE, IMAGE_TO_IMAGE, MASKING, UPSCALE } = catalogue;
const KEY_STORAGE = "localstability.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  client: null,
  engines: [], // GET /v1/engines/list
  generationId: null, // the running generation's
  busy: false,
};
let painter;
let init;
let loras;

// -- key, engines, balance ------------------------------------------------------------------

function connect() {
  const key = $("key").value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  state.client = key ? new Client(key) : null;
  state.engines = [];
  fillEngines();
  $("balance").textContent = "-";
  if (!state.client) return;
  hideError();
  loadEngines();
  refreshBalance();
}

// The engines the key may use, with the server's table of their tasks and sizes.
async function loadEngines() {
  const client = state.client;
  try {
    const [list] = await Promise.all([client.engines(), catalogue.load()]);
    if (client !== state.client) return; // the key changed meanwhile
    state.engines = list;
    fillEngines();
    const undescribed = list.map((engine) => engine.id).filter((id) => !catalogue.described(id));
    if (undescribed.length) {
      const message = `${undescribed.join(", ")}: not in the server's engine table, so the page `
        + "can't tell its tasks or sizes (reload the page)";
      showError(new ApiError(0, "engine_not_described", message));
    }
  } catch (error) {
    showError(error);
  }
}

async function refreshBalance() {
  const client = state.client;
  if (!client) return;
  try {
    const credits = await client.balance();
    if (client !== state.client) return;
    $("balance").textContent = credits.toLocaleString("en", { maximumFractionDigits: 6 });
  } catch (error) {
    showError(error);
  }
}

// -- the form --------------------------------------------------------------------------------

// The engines that serve the task; one the server's table lacks is shown, disabled.
function fillEngines() {
  const select = $("engine");
  const task = $("task").value;
  const previous = select.value;
  select.replaceChildren(
    ...state.engines
      .filter((engine) => catalogue.serves(engine.id, task) || !catalogue.described(engine.id))
      .map(engineOption),
  );
  const usable = [...select.options].filter((option) => !option.disabled);
  const kept = usable.find((option) => option.value === previous) ?? usable[0];
  select.value = kept?.value ?? "";
  engineChanged();
}

function engineOption(engine) {
  const option = new Option(`${engine.name} (${engine.id})`, engine.id);
  if (!catalogue.described(engine.id)) {
    option.disabled = true;
    option.text += ": not described by the server";
  }
  return option;
}

function engineChanged() {
  fillSizes(true);
  // Its LoRA adapters (GET /v1/engines/list); none on upscale.
  const engine = state.engines.find((listed) => listed.id === $("engine").value);
  loras.offer($("task").value === UPSCALE ? [] : (engine?.loras ?? []));
  showSections();
  updateButtons();
}

// The sizes the engine takes: its default size, or (after a change of width) the height
// chosen before where the new width allows it.
function fillSizes(engineDefault = false) {
  const engineId = $("engine").value;
  const [defaultWidth, defaultHeight] = catalogue.defaultSize(engineId) ?? [0, 0];
  const widths = engineId ? catalogue.widths(engineId) : []; // none before the engines are in
  const width = pick(widths, engineDefault ? defaultWidth : Number($("width").value), defaultWidth);
  fillNumbers($("width"), widths, width);
  const heights = catalogue.heightsFor(engineId, width);
  const height = engineDefault ? defaultHeight : Number($("height").value);
  fillNumbers($("height"), heights, pick(heights, height, defaultHeight));
  drawInit();
}

// `current` if offered, else `fallback` if offered, else the first offered.
function pick(offered, current, fallback) {
  if (offered.includes(current)) return current;
  return offered.includes(fallback) ? fallback : offered[0];
}

function fillNumbers(select, values, chosen) {
  select.replaceChildren(...values.map((value) => new Option(String(value), String(value))));
  if (chosen !== undefined) select.value = String(chosen);
}

function showSections() {
  const task = $("task").value;
  const prompted = task !== UPSCALE || catalogue.takesPrompts($("engine").value);
  const shown = {
    prompts: prompted,
    steps: prompted,
    diffusion: task !== UPSCALE,
    loras: task !== UPSCALE && loras.available,
    init: task !== TEXT_TO_IMAGE,
    fitted: task === IMAGE_TO_IMAGE || task === MASKING,
    mask: task === MASKING,
    strength: task === IMAGE_TO_IMAGE,
    upscale: task === UPSCALE,
  };
  for (const element of document.querySelectorAll("[data-show]")) {
    element.hidden = !shown[element.dataset.show];
  }
}

function updateButtons() {
  $("generate").disabled = state.busy || !state.client || !$("engine").value;
  $("cancel").disabled = !state.busy || !state.generationId;
}

function addPrompt(text = "", weight = 1) {
  const row = $("prompt-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".text").value = text;
  row.querySelector(".weight").value = String(weight);
  row.querySelector(".remove").addEventListener("click", () => row.remove());
  $("prompts").append(row);
}

// Samplers, style presets and the ranges of the numbers, from the OpenAPI document.
async function loadSchema() {
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new ApiError(response.status, "openapi", "no /openapi.json");
    const schemas = (await response.json()).components.schemas;
    for (const [id, name] of [["sampler", "Sampler"], ["style", "StylePreset"]]) {
      $(id).append(...(schemas[name]?.enum ?? []).map((value) => new Option(value, value)));
    }
    const fields = schemas.TextToImageRequestBody.properties;
    const bounds = { steps: "steps", cfg: "cfg_scale", samples: "samples", seed: "seed" };
    for (const [id, field] of Object.entries(bounds)) limit($(id), fields[field]);
    limit($("strength"), schemas.ImageToImageRequestBody?.properties?.image_strength);
    loras.limit(fields.loras, schemas.LoraRequest);
  } catch (error) {
    showError(error);
  }
}

function limit(input, field) {
  if (!field) return;
  if (field.minimum !== undefined) input.min = String(field.minimum);
  if (field.maximum !== undefined) input.max = String(field.maximum);
}

// -- the init image --------------------------------------------------------------------------

async function chooseInit(blob) {
  try {
    await init.choose(blob);
  } catch {
    showError(new ApiError(0, "invalid_image", "the browser could not read that image"));
  }
  drawInit(true);
}

// Image-to-image and masking send the init image fitted to the chosen size, so that it meets
// the engine's size rules; upscale sends it as it is.
function drawInit(fresh = false) {
  const [width, height] = [Number($("width").value), Number($("height").value)];
  const fitted = $("task").value !== UPSCALE && width && height;
  init.draw(fitted ? [width, height] : null, fresh);
}

// -- a generation ----------------------------------------------------------------------------

function prompts() {
  return [...$("prompts").querySelectorAll(".prompt")]
    .map((row) => ({
      text: row.querySelector(".text").value.trim(),
      weight: row.querySelector(".weight").value === "" ? 1 : Number(row.querySelector(".weight").value),
    }))
    .filter((prompt) => prompt.text);
}

// The request's fields (left out when empty: the server's default), by task.
function fields(task, engineId) {
  const value = (id) => $(id).value.trim();
  const chosen = {};
  const put = (name, text, number = true) => {
    if (text !== "") chosen[name] = number ? Number(text) : text;
  };
  if (task === UPSCALE) {
    put("width", value("upscale-width"));
    if (!catalogue.takesPrompts(engineId)) return chosen;
  } else {
    if (task === TEXT_TO_IMAGE) {
      put("width", value("width"));
      put("height", value("height"));
    }
    put("samples", value("samples"));
    put("sampler", value("sampler"), false);
    put("style_preset", value("style"), false);
    const adapters = loras.chosen(); // none: the engine as configured
    if (adapters.length) chosen.loras = adapters;
  }
  put("steps", value("steps"));
  put("cfg_scale", value("cfg"));
  put("seed", value("seed"));
  if (task === IMAGE_TO_IMAGE) {
    chosen.init_image_mode = "IMAGE_STRENGTH";
    put("image_strength", value("strength"));
  }
  return chosen;
}

async function requestBody(task, engineId) {
  const chosen = fields(task, engineId);
  const prompted = task !== UPSCALE || catalogue.takesPrompts(engineId);
  const textPrompts = prompted ? prompts() : []; // ESRGAN takes none
  if (task === TEXT_TO_IMAGE) return { text_prompts: textPrompts, ...chosen };
  if (!init.chosen) throw new ApiError(0, "no_init_image", "choose an init image first");
  const { loras: adapters = [], ...scalars } = chosen;
  const form = new FormData();
  appendList(form, "text_prompts", textPrompts);
  appendList(form, "loras", adapters);
  for (const [name, value] of Object.entries(scalars)) form.append(name, String(value));
  if (task === UPSCALE) {
    form.append("image", init.original(), "image.png");
  } else {
    form.append("init_image", await init.fitted(), "init.png");
  }
  if (task === MASKING) {
    if (!painter.painted()) throw new ApiError(0, "empty_mask", "paint the area to regenerate");
    form.append("mask_source", "MASK_IMAGE_WHITE");
    form.append("mask_image", await painter.toBlob(), "mask.png");
  }
  return form;
}

// A list of objects as the parts `field[index][key]` (docs/api.md, "Multipart bodies").
function appendList(form, field, items) {
  items.forEach((item, index) => {
    for (const [key, value] of Object.entries(item)) {
      form.append(`${field}[${index}][${key}]`, String(value));
    }
  });
}

async function generate(event) {
  event.preventDefault();
  if (state.busy || !state.client) return;
  hideError();
  const client = state.client;
  const task = $("task").value;
  const engineId = $("engine").value;
  setBusy(true);
  try {
    const accepted = await client.submit(engineId, task, await requestBody(task, engineId));
    state.generationId = accepted.id;
    updateButtons();
    showProgress(accepted);
    refreshBalance(); // its cost is held while it runs
    try {
      for await (const view of client.events(accepted.id)) showProgress(view);
    } catch (error) {
      if (error instanceof ApiError) throw error; // else the stream broke: poll below
    }
    showResults(await result(client, accepted.id), engineId, accepted.id);
  } catch (error) {
    showError(error);
  } finally {
    state.generationId = null;
    setBusy(false);
    refreshBalance();
  }
}

// Its artifacts, polling while the server still says 202 (after a broken event stream).
async function result(client, generationId) {
  for (;;) {
    const outcome = await client.result(generationId);
    if (outcome.artifacts) return outcome.artifacts;
    showProgress(outcome.status);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function cancel() {
  if (!state.generationId) return;
  $("cancel").disabled = true;
  try {
    showProgress(await state.client.cancel(state.generationId));
  } catch (error) {
    showError(error);
  }
}

function setBusy(busy) {
  state.busy = busy;
  updateButtons();
}

function showProgress(view) {
  const bar = $("progress");
  const { step = 0, total = 0 } = view.progress ?? {};
  if (total > 0) bar.max = total;
  if (view.status === "succeeded") bar.value = bar.max;
  else if (!finished(view)) bar.value = Math.min(step, bar.max);
  let text = view.status;
  if (view.status === "queued" && view.queue_position !== undefined) {
    text = `queued (${view.queue_position} ahead)`;
  } else if (view.status === "running") {
    text = total ? `running: ${step} of ${total}` : "running";
  }
  $("progress-text").textContent = text;
}

function showResults(artifacts, engineId, generationId) {
  const figures = artifacts.map((artifact) => {
    const bytes = Uint8Array.from(atob(artifact.base64), (c) => c.charCodeAt(0));
    const blob = new Blob([bytes], { type: "image/png" });
    const url = URL.createObjectURL(blob);
    const figure = $("result").content.firstElementChild.cloneNode(true);
    figure.dataset.generation = generationId;
    figure.title = `generation ${generationId}`;
    figure.querySelector("img").src = url;
    figure.querySelector(".seed").textContent = String(artifact.seed);
    figure.querySelector(".finish").textContent = artifact.finishReason;
    const link = figure.querySelector(".download");
    link.href = url;
    link.download = `${engineId}-${artifact.seed}.png`;
    figure.querySelector(".use").addEventListener("click", () => {
      if ($("task").value === TEXT_TO_IMAGE) setTask(IMAGE_TO_IMAGE);
      chooseInit(blob);
    });
    return figure;
  });
  $("gallery").prepend(...figures);
}

function setTask(task) {
  $("task").value = task;
  fillEngines();
}

function showError(error) {
  const text = error instanceof ApiError ? error.toString() : `error: ${error.message ?? error}`;
  $("error").textContent = text;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// -- wiring ----------------------------------------------------------------------------------

function start() {
  painter = new MaskPainter($("mask-canvas"));
  init = new InitImage($("init-canvas"), painter);
  loras = new LoraPicker($("loras"), $("add-lora"), $("lora-row"));
  addPrompt("", 1);
  addPrompt("", -1);
  let typing;
  $("key").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(connect, 300); // once a paste or the typing is over
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the key field: use it now
    clearTimeout(typing);
    connect();
  });
  $("task").addEventListener("change", () => setTask($("task").value));
  $("engine").addEventListener("change", engineChanged);
  $("width").addEventListener("change", () => fillSizes());
  $("height").addEventListener("change", () => drawInit());
  $("add-prompt").addEventListener("click", () => addPrompt("", 1));
  $("init-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) chooseInit(file);
  });
  $("brush").addEventListener("input", (event) => {
    painter.brush = Number(event.target.value);
  });
  $("erase").addEventListener("change", (event) => {
    painter.erasing = event.target.checked;
  });
  $("clear-mask").addEventListener("click", () => painter.clear());
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  painter.brush = Number($("brush").value);
  showSections();
  catalogue.load().catch(showError); // the engine table, once (connect waits for it)
  loadSchema();
  const saved = localStorage.getItem(KEY_STORAGE);
  if (saved) {
    $("key").value = saved;
    connect();
  }
}

start();
