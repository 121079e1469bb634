// What docs/api.md says of each engine: the tasks it serves, its default size and its size
// rule. GET /v1/engines/list gives only id, name, description and type, so the page keeps
// this table; tests/test_page.py holds it to the server's own rules (engines.py), size by size.

export const TEXT_TO_IMAGE = "text-to-image";
export const IMAGE_TO_IMAGE = "image-to-image";
export const MASKING = "image-to-image/masking";
export const UPSCALE = "image-to-image/upscale";

const DIFFUSION = [TEXT_TO_IMAGE, IMAGE_TO_IMAGE, MASKING];
const UPSCALING = [UPSCALE];

// A rule is either `sizes`, the allowed [width, height] pairs, or sides that are multiples of
// 64 from `min` to `max`, with, where given, a pixel count within `pixels` ([low, high]) and
// a shorter side of at most `shortMax`. `max` bounds what the page offers where the server's
// rule has no bound of its own (Stable Diffusion 2.1 would take 128x8192).
const STEP = 64;

export const ENGINES = {
  "localstability-shapes-v1": {
    tasks: DIFFUSION,
    default: [128, 128],
    rule: { min: 128, max: 512 },
  },
  "stable-diffusion-v1-6": {
    tasks: DIFFUSION,
    default: [512, 512],
    rule: { min: 320, max: 1536 },
  },
  "stable-diffusion-512-v2-1": {
    tasks: DIFFUSION,
    default: [512, 512],
    rule: { min: 128, max: 2048, pixels: [262144, 1048576] },
  },
  "stable-diffusion-xl-1024-v1-0": {
    tasks: DIFFUSION,
    default: [1024, 1024],
    rule: {
      sizes: [
        [1024, 1024], [1152, 896], [1216, 832], [1344, 768], [1536, 640],
        [640, 1536], [768, 1344], [832, 1216], [896, 1152],
      ],
    },
  },
  "stable-diffusion-xl-beta-v2-2-2": {
    tasks: DIFFUSION,
    default: [512, 512],
    rule: { min: 128, max: 896, shortMax: 512 },
  },
  // Upscalers: the output is twice the input, or the width or height asked for (>= 512).
  "esrgan-v1-x2plus": { tasks: UPSCALING },
  // The latent upscaler also takes prompts, seed, steps and cfg_scale.
  "stable-diffusion-x4-latent-upscaler": { tasks: UPSCALING, prompts: true },
};

// An engine this table does not know (a newer server): the general rule of the spec. The
// server has the last word; a size it refuses comes back as its 400 error.
const UNKNOWN = { tasks: DIFFUSION, default: [512, 512], rule: { min: 128, max: 1024 } };

export function engineInfo(engineId) {
  return ENGINES[engineId] ?? UNKNOWN;
}

export function allowed(rule, width, height) {
  if (rule.sizes) {
    return rule.sizes.some(([w, h]) => w === width && h === height);
  }
  if (width % STEP || height % STEP) return false;
  if (Math.min(width, height) < rule.min || Math.max(width, height) > rule.max) return false;
  if (rule.pixels && !(rule.pixels[0] <= width * height && width * height <= rule.pixels[1])) {
    return false;
  }
  return !(rule.shortMax && Math.min(width, height) > rule.shortMax);
}

// Every size the page offers for the engine, as [width, height] pairs, widths ascending.
export function sizeChoices(engineId) {
  const { rule } = engineInfo(engineId);
  if (!rule) return [];
  if (rule.sizes) return [...rule.sizes].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const sides = [];
  for (let side = Math.ceil(rule.min / STEP) * STEP; side <= rule.max; side += STEP) {
    sides.push(side);
  }
  return sides.flatMap((w) => sides.filter((h) => allowed(rule, w, h)).map((h) => [w, h]));
}

export function widths(engineId) {
  return [...new Set(sizeChoices(engineId).map(([w]) => w))];
}

export function heightsFor(engineId, width) {
  return sizeChoices(engineId)
    .filter(([w]) => w === width)
    .map(([, h]) => h);
}

export function serves(engineId, task) {
  return engineInfo(engineId).tasks.includes(task);
}
