// What the page knows of each engine the server has enabled: the tasks it serves, its default
// size, the sizes it accepts and whether it takes prompts on upscale. The server builds this
// table from its own rules (engines.py) at GET /playground/engines.json; the page keeps no
// copy of them, so it follows whatever engines a deployment serves.

import { send } from "./api.js";

export const TEXT_TO_IMAGE = "text-to-image";
export const IMAGE_TO_IMAGE = "image-to-image";
export const MASKING = "image-to-image/masking";
export const UPSCALE = "image-to-image/upscale";

const TABLE = "/playground/engines.json";

let engines = new Map(); // id -> {id, tasks, default_size, sizes, takes_prompts}
let loading = null;

// Fetches the table once (again only after a failure, which it throws as an ApiError).
export function load() {
  loading ??= send(TABLE, { headers: { Accept: "application/json" } })
    .then((response) => response.json())
    .then((body) => {
      engines = new Map(body.engines.map((engine) => [engine.id, engine]));
    })
    .catch((error) => {
      loading = null;
      throw error;
    });
  return loading;
}

// Whether the table describes the engine (every engine /v1/engines/list gives should be).
export function described(engineId) {
  return engines.has(engineId);
}

export function serves(engineId, task) {
  return engines.get(engineId)?.tasks.includes(task) ?? false;
}

// [width, height], or null for an engine with no size rule (an upscaler).
export function defaultSize(engineId) {
  return engines.get(engineId)?.default_size ?? null;
}

// Every size the engine accepts, as [width, height] pairs, widths ascending, then heights.
export function sizes(engineId) {
  return engines.get(engineId)?.sizes ?? [];
}

export function widths(engineId) {
  return [...new Set(sizes(engineId).map(([w]) => w))];
}

export function heightsFor(engineId, width) {
  return sizes(engineId)
    .filter(([w]) => w === width)
    .map(([, h]) => h);
}

// Whether its requests read text prompts, steps and cfg_scale (on upscale: the latent
// upscaler does, Real-ESRGAN does not).
export function takesPrompts(engineId) {
  return engines.get(engineId)?.takes_prompts ?? false;
}
