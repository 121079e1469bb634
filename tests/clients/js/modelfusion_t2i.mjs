// Text-to-image through the real npm client `modelfusion` (stability provider) against a Stability
// v1 server, summarised as ONE JSON line on stdout.
//
// usage: BASE_URL=http://127.0.0.1:PORT/v1 STABILITY_API_KEY=... ENGINE=... PROMPT=... \
//        [WIDTH=..] [HEIGHT=..] [STEPS=..] [SEED=..] [NEGATIVE_PROMPT=..] \
//        [CFG_SCALE=..] [SAMPLER=..] [SAMPLES=..] [STYLE_PRESET=..] [CLIP_GUIDANCE_PRESET=..] \
//        node modelfusion_t2i.mjs
// Optional numeric settings left unset (or empty) are not sent, so the server's defaults apply.
//
// success: {"ok": true, "png_base64_len": N, "png_sha256": "...", "width": W, "height": H,
//           "count": <artifacts>, "seed": <artifact 0 seed>, "finish_reason": "...",
//           "artifacts": [{"png_sha256", "width", "height", "seed", "finish_reason"}, ...]}
// failure: {"ok": false, "error": "<message>", "error_type": "...", "status": <HTTP status|null>,
//           "response_body": "<first 500 chars|null>", "cause": "<first 500 chars|null>"}
//          and exit code 1 (missing/invalid environment variables: error_type "UsageError").
//
// What modelfusion 0.137.0 sends (node_modules/modelfusion/index.js, src/model-provider/stability/):
//   POST `${baseUrl}/generation/${model}/text-to-image` via global fetch (undici), with the headers
//   `Authorization: Bearer <apiKey>` and `Content-Type: application/json` only: no Accept header
//   (undici sends `accept: */*`), no Stability-Client-*; no retries (retryNever), no throttling.
//   Body = JSON.stringify({height, width, text_prompts, cfg_scale, clip_guidance_preset, sampler,
//   samples, seed, steps, style_preset}); undefined settings vanish. The settings are camelCase
//   on the model (cfgScale, clipGuidancePreset, numberOfGenerations -> samples, stylePreset).
//   There is NO negative-prompt setting: the prompt given to the bare model IS `text_prompts`, so a
//   negative prompt is a second entry with a negative weight, as done below. (The
//   `.withTextPrompt()` template would map a string to [{text}] without a weight.)
//   The URL is assembled as `${protocol}://${host}:${port}${path}/generation/...` from the parsed
//   base URL (a base URL without a port gives "host:/v1/...", which fetch reads as the default port).
//   Success: body parsed as JSON and checked with zod: {artifacts: [{base64: string, seed: number,
//   finishReason: "SUCCESS"|"ERROR"|"CONTENT_FILTERED"}]} (extra keys ignored). The response
//   Content-Type is not checked. Failure (non-2xx): body parsed as JSON {message: string}; the
//   error is an ApiCallError whose message is that `message`, or the HTTP status text when the
//   body is empty or not of that shape.

import { createHash } from "node:crypto";
import { generateImage, stability } from "modelfusion";

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = "UsageError";
  }
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function requiredEnv(name) {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new UsageError(`environment variable ${name} is required`);
  }
  return value;
}

function optionalEnv(name) {
  const value = process.env[name];
  return value === undefined || value === "" ? undefined : value;
}

function optionalNumber(name) {
  const value = optionalEnv(name);
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isFinite(number)) {
    throw new UsageError(`environment variable ${name} must be a number, got ${JSON.stringify(value)}`);
  }
  return number;
}

function pngSize(bytes) {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 24 || !buf.subarray(0, 8).equals(PNG_SIGNATURE)) return null;
  if (buf.toString("latin1", 12, 16) !== "IHDR") return null;
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

async function main() {
  const baseUrl = requiredEnv("BASE_URL");
  const apiKey = requiredEnv("STABILITY_API_KEY");
  const engine = requiredEnv("ENGINE");
  const promptText = requiredEnv("PROMPT");
  const negative = optionalEnv("NEGATIVE_PROMPT");

  const api = stability.Api({ baseUrl, apiKey });
  const model = stability.ImageGenerator({
    api,
    model: engine,
    width: optionalNumber("WIDTH"),
    height: optionalNumber("HEIGHT"),
    steps: optionalNumber("STEPS"),
    seed: optionalNumber("SEED"),
    cfgScale: optionalNumber("CFG_SCALE"),
    numberOfGenerations: optionalNumber("SAMPLES"),
    sampler: optionalEnv("SAMPLER"),
    stylePreset: optionalEnv("STYLE_PRESET"),
    clipGuidancePreset: optionalEnv("CLIP_GUIDANCE_PRESET"),
  });

  // text_prompts as sent on the wire; see the header comment for why this is how negatives work.
  const prompt =
    negative === undefined
      ? [{ text: promptText }]
      : [
          { text: promptText, weight: 1 },
          { text: negative, weight: -1 },
        ];

  const { images, imagesBase64, rawResponse } = await generateImage({
    model,
    prompt,
    fullResponse: true,
  });

  const artifacts = images.map((bytes, i) => {
    const size = pngSize(bytes);
    const raw = rawResponse.artifacts[i];
    return {
      png_sha256: createHash("sha256").update(bytes).digest("hex"),
      png_base64_len: imagesBase64[i].length,
      width: size?.width ?? null,
      height: size?.height ?? null,
      seed: raw.seed,
      finish_reason: raw.finishReason,
    };
  });
  if (artifacts.length === 0) {
    throw new Error("response contained no artifacts");
  }
  const notPng = artifacts.findIndex((a) => a.width === null);
  if (notPng !== -1) {
    throw new Error(`artifact ${notPng} is not a PNG`);
  }
  const first = artifacts[0];
  return {
    ok: true,
    png_base64_len: first.png_base64_len,
    png_sha256: first.png_sha256,
    width: first.width,
    height: first.height,
    seed: first.seed,
    finish_reason: first.finish_reason,
    count: artifacts.length,
    artifacts,
  };
}

// For "Invalid JSON response" the cause is a TypeValidationError whose message embeds the whole
// response (base64 included); its own cause (a ZodError) carries the useful part.
function describeCause(cause) {
  if (cause == null) return null;
  const inner = cause.cause;
  if (inner?.issues) return JSON.stringify(inner.issues).slice(0, 500);
  return String(cause.message ?? cause).slice(0, 500);
}

try {
  emit(await main());
} catch (error) {
  // modelfusion throws ApiCallError (statusCode, responseBody) for HTTP/network failures; with the
  // default retryNever it is not wrapped, but unwrap a RetryError's lastError to be safe.
  const apiError = error?.name === "RetryError" && error.lastError ? error.lastError : error;
  const body = apiError?.responseBody;
  const cause = apiError?.cause;
  emit({
    ok: false,
    error: String(error?.message ?? error),
    error_type: error?.name ?? typeof error,
    status: typeof apiError?.statusCode === "number" ? apiError.statusCode : null,
    response_body: typeof body === "string" ? body.slice(0, 500) : null,
    cause: describeCause(cause),
  });
  process.exitCode = 1;
}
