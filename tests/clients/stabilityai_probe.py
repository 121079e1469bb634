"""Drive a Stability v1 server with the real PyPI client `stabilityai` 1.0.5; summarise the result.

Runs INSIDE .venv-stabilityai (created by scripts/setup-clients.sh): it imports only the
`stabilityai` package, its dependencies and the standard library -- never `localstability`.

usage: python stabilityai_probe.py BASE_URL API_KEY ACTION [JSON_ARGS]

BASE_URL  origin of the server with no path, e.g. http://127.0.0.1:8000 (the client hands it to
          aiohttp 3.8.4 as `base_url`, which must not carry a path; a trailing "/" is stripped).
ACTION    engines | account | balance | text-to-image | image-to-image | upscale
JSON_ARGS optional JSON object:
  common         "client_id", "client_version", "organization" (AsyncStabilityClient kwargs)
  generation     "engine" (engine id; default: the client's own default, SDXL 1.0 for generation
                 and esrgan-v1-x2plus for upscale), "out_dir" (write artifact_<i>.png there)
  text-to-image  "prompt" (sent as one text prompt without weight) or "text_prompts"
                 ([{"text", "weight"?}]), "negative_prompt" (turns the prompt list into
                 [{prompt, weight 1}, {negative, weight -1}]), "width", "height", "steps", "seed",
                 "samples", "cfg_scale", "sampler", "clip_guidance_preset", "style_preset", "extras"
  image-to-image "image" (path of the init image), the prompt keys, "image_strength" (the client
                 requires it; 0.35 when absent), "init_image_mode", "steps", "seed", "samples",
                 "cfg_scale", "sampler", "clip_guidance_preset", "style_preset", "extras";
                 "then": [overrides, ...] makes further calls on the same client, each with the
                 args updated by one override (exercises the client's leaking form-builder dict)
  upscale        "image" (path), "width" / "height" (accepted and validated by the client but
                 NOT sent: stabilityai 1.0.5 always sends width=1024)

Output: exactly one JSON line on stdout (the client's own debug prints are sent to stderr):
  engines        {"ok": true, "action", "engines": [ids], "raw": [...], "model_error": null|str}
  account        {"ok": true, "action", "account": {...raw...}, "model_error": null|str}
  balance        {"ok": true, "action", "credits": float, "raw": {...}, "model_error": null|str}
  generations    {"ok": true, "action", "artifacts": [{"seed", "finish_reason", "png_sha256",
                  "png_base64_len", "width", "height"[, "path"]}]}   (+ "calls": [[...], ...]
                  holding every call's artifacts when "then" was given)
  "model_error" is the client's own pydantic model rejecting the raw JSON (the client itself
  returns raw JSON for these three GETs, so a user parsing it would hit that error).
On any exception: {"ok": false, "action", "error_type", "status", "reason", "message"}, exit 1.
Bad usage: the same shape with error_type "UsageError", exit 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
import sys
from typing import Any

ACTIONS = ("engines", "account", "balance", "text-to-image", "image-to-image", "upscale")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Optional keyword arguments passed through to the client methods when present in JSON_ARGS.
T2I_KWARGS = (
    "width",
    "height",
    "steps",
    "seed",
    "samples",
    "cfg_scale",
    "sampler",
    "clip_guidance_preset",
    "style_preset",
    "extras",
)
I2I_KWARGS = (
    "init_image_mode",
    "steps",
    "seed",
    "samples",
    "cfg_scale",
    "sampler",
    "clip_guidance_preset",
    "style_preset",
    "extras",
)
UPSCALE_KWARGS = ("width", "height")


class UsageError(Exception):
    pass


def png_size(data: bytes) -> tuple[int | None, int | None]:
    """Width and height from a PNG's IHDR chunk, or (None, None) when it is not a PNG."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None, None


def summarise_artifacts(response: Any, out_dir: str | None, prefix: str = "") -> list[dict]:
    summaries = []
    for index, artifact in enumerate(response.artifacts):
        data = base64.b64decode(artifact.base64) if artifact.base64 is not None else b""
        width, height = png_size(data)
        seed = artifact.seed
        item: dict[str, Any] = {
            # the client's model types `seed` as float; report an int when it is integral
            "seed": int(seed) if seed is not None and float(seed).is_integer() else seed,
            "finish_reason": str(artifact.finishReason) if artifact.finishReason else None,
            "png_sha256": hashlib.sha256(data).hexdigest(),
            "png_base64_len": len(artifact.base64 or ""),
            "width": width,
            "height": height,
        }
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"{prefix}artifact_{index}.png")
            with open(path, "wb") as fh:
                fh.write(data)
            item["path"] = path
        summaries.append(item)
    return summaries


def prompt_kwargs(args: dict, models: Any) -> dict:
    """Either `text_prompt=` (one prompt, no weight) or `text_prompts=[TextPrompt...]`."""
    text_prompts = args.get("text_prompts")
    negative = args.get("negative_prompt")
    prompt = args.get("prompt")
    if text_prompts is not None:
        prompts = [models.TextPrompt(**tp) for tp in text_prompts]
        if negative:
            prompts.append(models.TextPrompt(text=negative, weight=-1.0))
        return {"text_prompts": prompts}
    if prompt is None:
        raise UsageError('a generation needs "prompt" or "text_prompts"')
    if negative:
        return {
            "text_prompts": [
                models.TextPrompt(text=prompt, weight=1.0),
                models.TextPrompt(text=negative, weight=-1.0),
            ]
        }
    return {"text_prompt": prompt}


def engine_kwarg(args: dict, models: Any) -> dict:
    engine_id = args.get("engine")
    if not engine_id:
        return {}
    # The client takes an Engine model (as returned by get_engines) and only uses its `id`.
    return {
        "engine": models.Engine(
            id=engine_id, name=engine_id, description=engine_id, type=models.Type.PICTURE
        )
    }


def passthrough(args: dict, names: tuple[str, ...]) -> dict:
    return {name: args[name] for name in names if name in args and args[name] is not None}


def model_error(model: Any, raw: Any) -> str | None:
    from pydantic import parse_obj_as

    try:
        parse_obj_as(model, raw)
    except Exception as exc:  # pydantic.ValidationError, but report anything
        return f"{type(exc).__name__}: {exc}"
    return None


async def run(base_url: str, api_key: str, action: str, args: dict) -> dict:
    from stabilityai import models
    from stabilityai.client import AsyncStabilityClient

    client_kwargs = {
        key: args[key] for key in ("client_id", "client_version", "organization") if key in args
    }
    out_dir = args.get("out_dir")
    result: dict[str, Any] = {"ok": True, "action": action}

    async with AsyncStabilityClient(api_host=base_url, api_key=api_key, **client_kwargs) as client:
        if action == "engines":
            raw = await client.get_engines()
            result["engines"] = [engine.get("id") for engine in raw]
            result["raw"] = raw
            result["model_error"] = model_error(models.ListEnginesResponseBody, raw)
        elif action == "account":
            raw = await client.get_account()
            result["account"] = raw
            result["model_error"] = model_error(models.AccountResponseBody, raw)
        elif action == "balance":
            raw = await client.get_account_balance()
            result["credits"] = raw.get("credits") if isinstance(raw, dict) else None
            result["raw"] = raw
            result["model_error"] = model_error(models.BalanceResponseBody, raw)
        elif action == "text-to-image":
            response = await client.text_to_image(
                **prompt_kwargs(args, models),
                **engine_kwarg(args, models),
                **passthrough(args, T2I_KWARGS),
            )
            result["artifacts"] = summarise_artifacts(response, out_dir)
        elif action == "image-to-image":
            calls = [args] + [{**args, **override} for override in args.get("then", [])]
            all_artifacts = []
            for number, call_args in enumerate(calls):
                image_path = call_args.get("image")
                if not image_path:
                    raise UsageError('image-to-image needs "image" (a file path)')
                with open(image_path, "rb") as init_image:
                    response = await client.image_to_image(
                        init_image,
                        **prompt_kwargs(call_args, models),
                        image_strength=call_args.get("image_strength", 0.35),
                        **engine_kwarg(call_args, models),
                        **passthrough(call_args, I2I_KWARGS),
                    )
                prefix = f"call{number}_" if len(calls) > 1 else ""
                all_artifacts.append(summarise_artifacts(response, out_dir, prefix))
            result["artifacts"] = all_artifacts[0]
            if len(calls) > 1:
                result["calls"] = all_artifacts
        elif action == "upscale":
            image_path = args.get("image")
            if not image_path:
                raise UsageError('upscale needs "image" (a file path)')
            with open(image_path, "rb") as image:
                response = await client.image_to_image_upscale(
                    image, **engine_kwarg(args, models), **passthrough(args, UPSCALE_KWARGS)
                )
            result["artifacts"] = summarise_artifacts(response, out_dir)
    return result


def error_result(action: str | None, exc: BaseException) -> dict:
    # POST methods wrap aiohttp's ClientResponseError in a stabilityai exception (chained via
    # `raise ... from e`); the GET methods let the ClientResponseError itself escape.
    status = getattr(exc, "status", None)
    reason = getattr(exc, "message", None) if status is not None else None
    cause = exc.__cause__
    if status is None and cause is not None and getattr(cause, "status", None) is not None:
        status = getattr(cause, "status", None)
        reason = getattr(cause, "message", None)
    return {
        "ok": False,
        "action": action,
        "error_type": type(exc).__name__,
        "status": status,
        "reason": reason if isinstance(reason, str) else None,
        "message": " ".join(str(exc).split()) or repr(exc),
    }


def emit(obj: dict) -> None:
    sys.stderr.flush()
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    action = argv[3] if len(argv) > 3 else None
    try:
        if len(argv) not in (4, 5):
            raise UsageError("usage: stabilityai_probe.py BASE_URL API_KEY ACTION [JSON_ARGS]")
        base_url, api_key = argv[1].rstrip("/"), argv[2]
        if action not in ACTIONS:
            raise UsageError(f"ACTION must be one of {', '.join(ACTIONS)}")
        args = json.loads(argv[4]) if len(argv) == 5 else {}
        if not isinstance(args, dict):
            raise UsageError("JSON_ARGS must be a JSON object")
    except (UsageError, json.JSONDecodeError) as exc:
        emit({**error_result(action, exc), "error_type": "UsageError"})
        return 2

    try:
        # stabilityai 1.0.5 print()s its multipart form while building it
        # (utils.serialize_for_form); keep stdout for our single JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            result = asyncio.run(run(base_url, api_key, action, args))
    except UsageError as exc:
        emit({**error_result(action, exc), "error_type": "UsageError"})
        return 2
    except Exception as exc:
        emit(error_result(action, exc))
        return 1
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
